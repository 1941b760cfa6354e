"""Data-layer throughput: shard preparation per source form, and loader crops
from local disk and from a GCS server.

  python benchmarks/bench_data.py [--clips=48] [--frontend=matpac] [--gcs] [--workers=0]

Preparation (one process): the same procedural 10-second clips as an audio
folder (16 kHz 16-bit FLAC), as Hugging Face parquet shards of the
agkphysics/AudioSet schema (48 kHz 24-bit FLAC bytes, as AudioSet is there)
and as WebDataset tars (16 kHz FLAC + JSON, as confit/audioset-16khz-wds):
decode + resample + front end + float16 + CRC + write.

Loader: 608-frame crops per second from the folder's shards, batch 64, as
wall rate and per CPU-second of this process (the per-core number on a shared
machine). With `--gcs` the same shards are uploaded to a fake-gcs-server on
localhost (benchmarks/gcs_emulator.py) and read with the same settings,
interleaved with the local runs; the server's own CPU is not in the
per-CPU-s number (it is another process), but it shares the machine's cores.
verify_crc='once' is the steady state of a multi-epoch run.
"""

from __future__ import annotations

import io
import json
import os
import sys
import tempfile
import time

import numpy as np
import soundfile as sf
from absl import flags

from matpac_jax import cli, storage
from matpac_jax.data import loader, prepare, toy_sounds
from matpac_jax.data import shards as shard_files

FLAGS = flags.FlagValues()
flags.DEFINE_integer("clips", 48, "10-s clips to prepare", flag_values=FLAGS)
flags.DEFINE_integer("crops", 6400, "crops to time", flag_values=FLAGS)
flags.DEFINE_enum("frontend", "matpac", ["matpac", "m2d", "beats"], "front end",
                  flag_values=FLAGS)
flags.DEFINE_integer("read_threads", 0, "loader read threads", flag_values=FLAGS)
flags.DEFINE_integer("workers", 0, "loader worker processes (grain)", flag_values=FLAGS)
flags.DEFINE_bool("gcs", False, "also read the shards from a local GCS server",
                  flag_values=FLAGS)
flags.DEFINE_integer("rounds", 2, "interleaved local/GCS rounds", flag_values=FLAGS)


def _clips(n: int):
    rng = np.random.default_rng(0)
    for i in range(n):
        label = toy_sounds.CLASSES[i % len(toy_sounds.CLASSES)]
        yield f"{i:04d}", toy_sounds.synthesize(label, rng, seconds=10.0)


def _flac(wave: np.ndarray, sr: int, subtype: str) -> bytes:
    import soxr

    buf = io.BytesIO()
    sf.write(buf, soxr.resample(wave, toy_sounds.SR, sr) if sr != toy_sounds.SR else wave, sr,
             format="FLAC", subtype=subtype)
    return buf.getvalue()


def write_sources(tmp: str, n: int) -> dict[str, str]:
    """The same clips as a folder, parquet shards and WebDataset tars."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import webdataset

    paths = {k: os.path.join(tmp, k) for k in ("folder", "parquet", "tar")}
    for p in paths.values():
        os.makedirs(p)
    clips = list(_clips(n))
    for key, wave in clips:
        sf.write(os.path.join(paths["folder"], f"{key}.flac"), wave, toy_sounds.SR,
                 subtype="PCM_16")
    half = (len(clips) + 1) // 2
    for part, chunk in enumerate((clips[:half], clips[half:])):
        rows = [(k, _flac(w, 48000, "PCM_24")) for k, w in chunk]
        table = pa.table({"video_id": [k for k, _ in rows],
                          "audio": [{"bytes": b, "path": f"{k}.flac"} for k, b in rows],
                          "labels": [["/m/09x0r"]] * len(rows)})
        pq.write_table(table, os.path.join(paths["parquet"], f"{part:02d}.parquet"),
                       row_group_size=8)
        with open(os.path.join(paths["tar"], f"{part:06d}.tar"), "wb") as f, \
                webdataset.TarWriter(f) as tar:
            for k, w in chunk:
                tar.write({"__key__": k, "flac": _flac(w, 16000, "PCM_16"),
                           "json": json.dumps({"id": k, "label_id": [0]}).encode()})
    return paths


def bench_prepare(source: str, out: str, frontend: str) -> float:
    start = time.perf_counter()
    m = prepare.prepare(source, out, frontend, workers=1)
    return (m["num_examples"] + len(m["skipped"])) / (time.perf_counter() - start)


def bench_loader(shards: str, frontend: str, crops: int, verify_crc, read_threads: int = 0,
                 workers: int = 0) -> tuple[float, float]:
    """(crops per wall second, crops per CPU-second of this process)."""
    it = loader.make_loader(shards, frontend=frontend, crop_frames=608, batch_size=64, seed=0,
                            shard_index=0, shard_count=1, verify_crc=verify_crc,
                            read_threads=read_threads, worker_count=workers)
    records = sum(len(ix) for ix in shard_files.load_indexes(shard_files.find_shards(shards)))
    n = 0
    while n < records + 64:  # Warm-up: numba compile, and the first epoch ('once' checks it).
        n += next(it)["x"].shape[0]
    start, cpu = time.perf_counter(), time.process_time()
    n = 0
    while n < crops:
        n += next(it)["x"].shape[0]
    return n / (time.perf_counter() - start), n / (time.process_time() - cpu)


def main(argv=None) -> None:
    cli.parse(FLAGS, argv, "python benchmarks/bench_data.py", __doc__)
    args = FLAGS
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        sources = write_sources(tmp, args.clips)
        prepare.prepare(sources["folder"], os.path.join(tmp, "warm"), args.frontend)  # imports
        for kind, path in sources.items():
            rate = bench_prepare(path, os.path.join(tmp, f"shards_{kind}"), args.frontend)
            print(f"prepare[{kind}, {args.frontend}]: {rate:.1f} 10-s clips/s (1 process)")
        shards = os.path.join(tmp, "shards_folder")
        where = {"local": shards}
        if args.gcs:
            sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
            from benchmarks import gcs_emulator

            _, server = gcs_emulator.start()
            bucket = gcs_emulator.make_bucket("bench-data")
            for p in storage.find(shards):
                storage.copy_file(p, storage.join(bucket, "shards", os.path.basename(p)))
            where["gcs"] = storage.join(bucket, "shards")
        rates: dict[str, list] = {k: [] for k in where}
        for _ in range(args.rounds):
            for name, path in where.items():
                rates[name].append(bench_loader(path, args.frontend, args.crops, "once",
                                                args.read_threads, args.workers))
        for name, got in rates.items():
            wall, cpu = np.median([g[0] for g in got]), np.median([g[1] for g in got])
            print(f"loader[{name}, {args.frontend}, workers={args.workers}, "
                  f"read_threads={args.read_threads}]: {wall:.0f} crops/s, {cpu:.0f} per CPU-s "
                  f"(rounds: {', '.join(f'{g[0]:.0f}' for g in got)})")
        if args.gcs:
            ratio = np.median([g[0] for g in rates["gcs"]]) / np.median(
                [g[0] for g in rates["local"]])
            print(f"gcs / local crops/s: {ratio:.2f} (goal >= 0.75); load "
                  f"{os.getloadavg()[0]:.2f}", flush=True)
            server.terminate()
            os._exit(0)  # grain's read-ahead threads would retry against the stopped server


if __name__ == "__main__":
    main()
