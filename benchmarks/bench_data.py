"""Data-layer throughput on one core: shard preparation and loader crops.

  python benchmarks/bench_data.py [--clips=48] [--frontend=matpac]

Preparation: 10-second procedural clips written as 16-bit FLAC, then
`prepare` with one process (decode + front end + float16 + CRC + write).
Loader: 608-frame crops per second from those shards, in-process
(worker_count=0, read_threads=0: everything on the calling thread), as wall
rate and per CPU-second of this process (the per-core number on a shared
machine). verify_crc='once' is the steady state of a multi-epoch run (each
record was checked on its first read); True re-checks every read, which is
also the cost of the first epoch under 'once'.
"""

from __future__ import annotations

import os
import tempfile
import time

import numpy as np
import soundfile as sf
from absl import flags

from matpac_jax import cli
from matpac_jax.data import loader, prepare, toy_sounds

FLAGS = flags.FlagValues()
flags.DEFINE_integer("clips", 48, "10-s clips to prepare", flag_values=FLAGS)
flags.DEFINE_integer("crops", 6400, "crops to time", flag_values=FLAGS)
flags.DEFINE_enum("frontend", "matpac", ["matpac", "m2d", "beats"], "front end",
                  flag_values=FLAGS)
flags.DEFINE_integer("read_threads", 0, "loader read threads", flag_values=FLAGS)


def _write_flacs(directory: str, n: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        label = toy_sounds.CLASSES[i % len(toy_sounds.CLASSES)]
        wave = toy_sounds.synthesize(label, rng, seconds=10.0)
        sf.write(os.path.join(directory, f"{i:04d}.flac"), wave, toy_sounds.SR, subtype="PCM_16")


def bench_prepare(tmp: str, clips: int, frontend: str) -> tuple[float, str]:
    audio_dir, out = os.path.join(tmp, "flac"), os.path.join(tmp, f"shards_{frontend}")
    os.makedirs(audio_dir)
    _write_flacs(audio_dir, clips)
    prepare.prepare(audio_dir, out, frontend, num_shards=1)  # Warm-up (imports, filterbanks).
    for f in os.listdir(out):
        os.remove(os.path.join(out, f))
    start = time.perf_counter()
    prepare.prepare(audio_dir, out, frontend, num_shards=2, workers=1)
    return clips / (time.perf_counter() - start), out


def bench_loader(
    shards: str, frontend: str, crops: int, verify_crc: bool | str, read_threads: int = 0
) -> tuple[float, float]:
    """(crops per wall second, crops per CPU-second of this process)."""
    it = loader.make_loader(
        shards,
        frontend=frontend,
        crop_frames=608,
        batch_size=64,
        seed=0,
        shard_index=0,
        shard_count=1,
        verify_crc=verify_crc,
        read_threads=read_threads,
    )
    records = sum(len(loader.load_index(p)) for p in loader.find_shards(shards))
    n = 0
    while n < records + 64:  # Warm-up: numba compile, and the first epoch ('once' checks it).
        n += next(it)["x"].shape[0]
    start, cpu = time.perf_counter(), time.process_time()
    n = 0
    while n < crops:
        n += next(it)["x"].shape[0]
    return n / (time.perf_counter() - start), n / (time.process_time() - cpu)


def bench_element(shards: str, frontend: str, crops: int) -> float:
    """Read + decode + crop + normalise in a plain loop: the pipeline minus grain."""
    source = loader.ShardSource(loader.find_shards(shards), verify_crc=False)
    crop = loader.CropNormalize(frontend, 608, "pad", None, False)
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for i in range(crops):
        crop.random_map(source[i % len(source)], rng)
    return crops / (time.perf_counter() - start)


def main(argv=None) -> None:
    cli.parse(FLAGS, argv, "python benchmarks/bench_data.py", __doc__)
    args = FLAGS
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        rate, shards = bench_prepare(tmp, args.clips, args.frontend)
        print(f"prepare[{args.frontend}]: {rate:.1f} 10-s FLAC clips/s (1 process; target >= 100)")
        for verify in ("once", True, False):
            rate, per_cpu = bench_loader(
                shards, args.frontend, args.crops, verify, args.read_threads
            )
            print(
                f"loader[{args.frontend}, verify_crc={verify!r}]: {rate:.0f} 608-frame crops/s, "
                f"{per_cpu:.0f} per CPU-s (in-process; target >= 5000 per core; "
                f"load {os.getloadavg()[0]:.1f})"
            )
        rate = bench_element(shards, args.frontend, args.crops)
        print(f"element[{args.frontend}]: {rate:.0f} crops/s (source + crop, no grain, no CRC)")


if __name__ == "__main__":
    main()
