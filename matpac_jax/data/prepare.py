"""Audio folder or CSV -> float16 log-mel TFRecord shards + manifest.json.

  python -m matpac_jax.data.prepare --input=DIR_OR_CSV --output=OUT --frontend=matpac

Each shard is written to `<shard>.tmp` and renamed when complete, then a
sidecar `<shard>.json` (counts, skipped files) and `<shard>.index.npy` (record
offsets for the loader) are written. A shard counts as finished only when its
sidecar exists, so re-running the same command resumes: finished shards are
kept, the others (and any leftover .tmp) are redone.

Labels (fine-tuning data): a CSV `--input` with a `label` column, or
`--labels=CSV` beside an audio folder: a `file,label` CSV (`;` between the
labels of a multi-label clip) or AudioSet's segment CSV (`# YTID,
start_seconds, end_seconds, positive_labels`), matched to files named
`YTID.wav`, `YYTID.wav` or `YTID_<start>[_<end>].wav`. Clips without a label
are skipped and listed. Labels go into each record and into the shard's
sidecar (`labels`), so balanced sampling reads no record.

Several machines: run with `--worker_index i --num_workers m` on each. Worker i
writes the shards s with s % m == i and `manifest-<i>-of-<m>.json`. When all are
done, `--output OUT --merge` writes the combined `manifest.json`; the loader
also works without it (it reads every `*.tfrecord` under OUT).
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import hashlib
import json
import logging
import math
import multiprocessing
import os
import sys
import time

import numpy as np
from absl import flags

from matpac_jax import cli, errors
from matpac_jax.data import audio
from matpac_jax.data import frontends
from matpac_jax.data import tfrecord

log = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (
    ".wav",
    ".flac",
    ".ogg",
    ".mp3",
    ".m4a",
    ".aac",
    ".opus",
    ".aif",
    ".aiff",
    ".au",
    ".wma",
    ".webm",
    ".mp4",
)
CLIPS_PER_SHARD = 1024  # ~160 MB of 10 s float16 log-mels.
MIN_SAMPLES = frontends.N_FFT  # One full 25 ms window, else "too short".


@dataclasses.dataclass(frozen=True)
class Clip:
    path: str
    id: str
    label: str | None = None


def list_inputs(input_path: str) -> list[Clip]:
    """Clips of an audio folder (recursive) or of a CSV with `file` [+ `label`] columns."""
    input_path = os.fspath(input_path)
    if os.path.isdir(input_path):
        clips = []
        for root, _, files in os.walk(input_path):
            for f in files:
                if f.lower().endswith(AUDIO_EXTENSIONS):
                    path = os.path.join(root, f)
                    clips.append(Clip(path, os.path.relpath(path, input_path).replace(os.sep, "/")))
        return sorted(clips, key=lambda c: c.id)
    if os.path.isfile(input_path):
        base = os.path.dirname(os.path.abspath(input_path))
        with open(input_path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if "file" not in (reader.fieldnames or []):
                raise errors.DataError(
                    f"{input_path}: CSV needs a 'file' column (has {reader.fieldnames})"
                )
            return [
                Clip(os.path.join(base, row["file"]), row["file"], row.get("label") or None)
                for row in reader
            ]
    raise errors.DataNotFoundError(f"--input {input_path}: no such folder or CSV file")


def read_labels(path: str) -> dict[str, str]:
    """id -> ';'-joined labels from a `file,label` CSV or an AudioSet segment CSV."""
    with open(path, newline="", encoding="utf-8") as f:
        lines = f.read().splitlines()
    body = [ln for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if not body:
        raise errors.TaskFileError(f"--labels {path}: no rows")
    header = [h.strip() for h in next(csv.reader([body[0]]))]
    if "label" in header:
        key = next((k for k in ("file", "id", "YTID") if k in header), None)
        if key is None:
            raise errors.TaskFileError(f"--labels {path}: needs a 'file' (or 'id') column "
                                       "next to 'label'")
        rows = csv.DictReader(body)
        return {r[key].strip(): r["label"].strip() for r in rows}
    out = {}  # AudioSet: YTID, start, end, "label,label,..."
    for n, row in enumerate(csv.reader(body, skipinitialspace=True)):
        if len(row) < 4:
            raise errors.TaskFileError(f"--labels {path}: row {n + 1} is neither 'file,label' "
                                       f"nor AudioSet 'YTID, start, end, labels': {row}")
        out[row[0].strip()] = ";".join(x.strip() for x in row[3].split(",") if x.strip())
    return out


def _label_keys(clip_id: str) -> list[str]:
    """Names a label CSV may use for a clip: the id, its stem, the AudioSet YTID."""
    stem = os.path.splitext(os.path.basename(clip_id))[0]
    keys = [clip_id, os.path.splitext(clip_id)[0], stem]
    base = stem
    for _ in range(2):  # YTID_30.000 or YTID_30000_40000
        head, _, tail = base.rpartition("_")
        if head and tail.replace(".", "").isdigit():
            base = head
            keys.append(base)
    keys += [k[1:] for k in keys if k.startswith("Y")]
    return keys


def attach_labels(clips: list[Clip], labels: dict[str, str]) -> tuple[list[Clip], list[dict]]:
    """(labelled clips, skipped entries) for clips matched to a `read_labels` dict."""
    kept, skipped = [], []
    for c in clips:
        label = next((labels[k] for k in _label_keys(c.id) if k in labels), None)
        if label:
            kept.append(dataclasses.replace(c, label=label))
        else:
            skipped.append({"file": c.path, "reason": "no label in the --labels CSV"})
    return kept, skipped


def shard_path(output: str, name: str, index: int, count: int) -> str:
    return os.path.join(output, f"{name}-{index:05d}-of-{count:05d}.tfrecord")


def frontend_params(frontend: str) -> dict:
    """What a reader needs to interpret the shards."""
    return {
        "frontend": frontend,
        "sample_rate": frontends.SR,
        "n_fft": frontends.N_FFT,
        "hop_length": frontends.HOP,
        "num_bins": frontends.NUM_BINS[frontend],
        "layout": frontends.FEATURE_LAYOUT[frontend],
        "norm": list(frontends.NORM[frontend]),
        "log_floor": frontends.LOG_EPS,
        "dtype": "float16",
        "normalised": False,
    }


def _fingerprint(frontend: str, clips: list[Clip]) -> str:
    h = hashlib.sha256(frontend.encode())
    for c in clips:
        h.update(f"\0{c.id}\0{c.label}".encode())
    return h.hexdigest()[:16]


def _featurize(clip: Clip, frontend: str) -> np.ndarray:
    wave = audio.load_audio(clip.path)
    if wave.size < MIN_SAMPLES:
        raise audio.AudioDecodeError(
            clip.path, f"too short: {wave.size} samples < {MIN_SAMPLES} (one 25 ms window)"
        )
    return frontends.compute(frontend, wave)


def write_shard(path: str, clips: list[Clip], frontend: str, progress=None) -> dict:
    """Writes one shard + its index and sidecar; returns the sidecar dict."""
    info = {
        "file": os.path.basename(path),
        "fingerprint": _fingerprint(frontend, clips),
        "num_examples": 0,
        "num_frames": 0,
        "skipped": [],
    }
    labels = [] if any(c.label for c in clips) else None
    time_axis = -1 if frontends.FEATURE_LAYOUT[frontend] == "freq_time" else 0
    with tfrecord.TFRecordWriter(path) as writer:
        for clip in clips:
            try:
                feat = _featurize(clip, frontend)
            except audio.AudioDecodeError as err:
                log.warning("skipped %s: %s", clip.path, err.reason)
                info["skipped"].append({"file": clip.path, "reason": err.reason})
            else:
                writer.write(tfrecord.encode_example(feat, clip.id, clip.label))
                if labels is not None:
                    labels.append(clip.label or "")
                info["num_examples"] += 1
                info["num_frames"] += int(feat.shape[time_axis])
            if progress is not None:
                progress(1)
    index = np.asarray(writer.offsets, np.int64).reshape(-1, 2)
    np.save(path + ".index.npy", index)
    if labels is not None:
        info["labels"] = labels
    _write_json(path + ".json", info)
    return info


def _write_json(path: str, obj: dict) -> None:
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)
    os.replace(path + ".tmp", path)


def _finished(path: str, fingerprint: str) -> dict | None:
    if not (os.path.exists(path) and os.path.exists(path + ".json")):
        return None
    with open(path + ".json", encoding="utf-8") as f:
        info = json.load(f)
    if info.get("fingerprint") != fingerprint:
        raise errors.DataError(
            f"{path} was written from other inputs or another front end; "
            "use a new --output folder"
        )
    return info


def _write_shard_task(args):
    path, clips, frontend = args
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    return write_shard(path, clips, frontend)


def _progress_bar(total: int):
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="clip", desc="prepare", smoothing=0.1)


def prepare(
    input: str,
    output: str,
    frontend: str,
    num_shards: int | None = None,  # pylint: disable=redefined-builtin
    workers: int = 1,
    worker_index: int = 0,
    num_workers: int = 1,
    name: str = "data",
    labels: str | None = None,
    clips: list[Clip] | None = None,
) -> dict:
    """Writes this worker's missing shards and its manifest; returns the manifest.
    `labels`: a label CSV (`read_labels`); `clips`: the clips, instead of
    listing `input` (which then only names the source in the manifest)."""
    frontends.check_frontend(frontend)
    if not 0 <= worker_index < num_workers:
        raise errors.DataError(f"worker_index {worker_index} not in [0, {num_workers})")
    clips = list_inputs(input) if clips is None else clips
    if not clips:
        raise errors.DataError(f"--input {input}: no audio files found")
    unlabelled = []
    if labels:
        clips, unlabelled = attach_labels(clips, read_labels(labels))
        for s in unlabelled[:5]:
            log.warning("skipped %s: %s", s["file"], s["reason"])
        if not clips:
            raise errors.DataError(f"--labels {labels}: no clip of --input {input} has a label there")
    num_shards = num_shards or max(1, math.ceil(len(clips) / CLIPS_PER_SHARD))
    os.makedirs(output, exist_ok=True)
    splits = np.array_split(np.arange(len(clips)), num_shards)
    mine = [s for s in range(num_shards) if s % num_workers == worker_index]
    infos, todo = {}, []
    for s in mine:
        path = shard_path(output, name, s, num_shards)
        shard_clips = [clips[i] for i in splits[s]]
        info = _finished(path, _fingerprint(frontend, shard_clips))
        if info is None:
            todo.append((path, shard_clips, frontend))
        else:
            infos[s] = info
    total = sum(len(t[1]) for t in todo)
    bar = _progress_bar(total)
    start = time.perf_counter()
    done = {}  # shard file name -> sidecar
    if workers <= 1 or len(todo) <= 1:
        for task in todo:
            info = write_shard(*task, progress=bar.update if bar else None)
            done[info["file"]] = info
    else:
        ctx = multiprocessing.get_context("spawn")  # No fork: callers may hold JAX/grain threads.
        sizes = {os.path.basename(t[0]): len(t[1]) for t in todo}
        with ctx.Pool(min(workers, len(todo))) as pool:
            for info in pool.imap_unordered(_write_shard_task, todo):
                done[info["file"]] = info
                if bar:
                    bar.update(sizes[info["file"]])
    if bar:
        bar.close()
    for s in mine:
        if s not in infos:
            infos[s] = done[os.path.basename(shard_path(output, name, s, num_shards))]
    elapsed = time.perf_counter() - start
    manifest = _manifest(
        [infos[s] for s in mine], frontend, input, name, num_shards, worker_index, num_workers
    )
    manifest["clips_per_second"] = round(total / elapsed, 2) if total else None
    manifest["skipped"] += unlabelled
    classes = sorted({c for i in infos.values() for lab in i.get("labels", ())
                      for c in lab.split(";") if c})
    if classes:
        manifest["classes"] = classes
    fname = (
        "manifest.json" if num_workers == 1 else f"manifest-{worker_index}-of-{num_workers}.json"
    )
    _write_json(os.path.join(output, fname), manifest)
    log.info(
        "%s: %d examples in %d shards, %d skipped",
        output,
        manifest["num_examples"],
        len(manifest["shards"]),
        len(manifest["skipped"]),
    )
    return manifest


def _manifest(
    infos: list[dict],
    frontend: str,
    input_path: str,
    name: str,
    num_shards: int,
    worker_index: int,
    num_workers: int,
) -> dict:
    return {
        **frontend_params(frontend),
        "input": os.path.abspath(input_path),
        "name": name,
        "num_shards": num_shards,
        "worker_index": worker_index,
        "num_workers": num_workers,
        "num_examples": sum(i["num_examples"] for i in infos),
        "num_frames": sum(i["num_frames"] for i in infos),
        "shards": [{k: i[k] for k in ("file", "num_examples", "num_frames")} for i in infos],
        "skipped": [s for i in infos for s in i["skipped"]],
    }


def merge_manifests(output: str) -> dict:
    """Combines manifest-<i>-of-<m>.json of all workers into manifest.json."""
    parts = sorted(glob.glob(os.path.join(output, "manifest-*-of-*.json")))
    if not parts:
        raise errors.DataNotFoundError(f"no manifest-<i>-of-<m>.json under {output}")
    manifests = [json.load(open(p, encoding="utf-8")) for p in parts]
    m = manifests[0]["num_workers"]
    have = sorted(x["worker_index"] for x in manifests if x["num_workers"] == m)
    if have != list(range(m)) or len(manifests) != m:
        raise errors.DataError(f"{output}: expected manifests of workers 0..{m - 1}, found {parts}")
    if len({x["frontend"] for x in manifests}) != 1:
        raise errors.DataError(f"{output}: worker manifests disagree on the front end")
    infos = sorted((s for x in manifests for s in x["shards"]), key=lambda s: s["file"])
    skipped = [s for x in manifests for s in x["skipped"]]
    m0 = manifests[0]
    merged = _manifest(
        [{**s, "skipped": []} for s in infos],
        m0["frontend"],
        m0["input"],
        m0["name"],
        m0["num_shards"],
        0,
        1,
    )
    merged["skipped"] = skipped
    _write_json(os.path.join(output, "manifest.json"), merged)
    return merged


FLAGS = flags.FlagValues()
flags.DEFINE_string("input", None, "audio folder (recursive) or CSV with 'file'[,'label']",
                    flag_values=FLAGS)
flags.DEFINE_string("output", None, "shard folder", flag_values=FLAGS, required=True)
flags.DEFINE_enum("frontend", None, sorted(frontends.FRONTENDS), "front end of the shards",
                  flag_values=FLAGS)
flags.DEFINE_integer("num_shards", None, "shards (default: ~1024 clips each)", flag_values=FLAGS)
flags.DEFINE_integer("workers", 1, "processes on this machine", flag_values=FLAGS)
flags.DEFINE_integer("worker_index", 0, "this machine's index", flag_values=FLAGS)
flags.DEFINE_integer("num_workers", 1, "machines sharing the job", flag_values=FLAGS)
flags.DEFINE_string("name", "data", "shard file name prefix", flag_values=FLAGS)
flags.DEFINE_bool("merge", False, "only merge the worker manifests", flag_values=FLAGS)
flags.DEFINE_string("labels", None, "label CSV for an audio folder: 'file,label' or AudioSet's "
                    "segment CSV (YTID, start, end, positive_labels)", flag_values=FLAGS)


def main(argv=None) -> int:
    cli.parse(FLAGS, argv, "python -m matpac_jax.data.prepare", __doc__)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if FLAGS.merge:
        m = merge_manifests(FLAGS.output)
    else:
        if not FLAGS.input or not FLAGS.frontend:
            print("error: --input and --frontend are required (unless --merge)", file=sys.stderr)
            return 2
        m = prepare(FLAGS.input, FLAGS.output, FLAGS.frontend, FLAGS.num_shards, FLAGS.workers,
                    FLAGS.worker_index, FLAGS.num_workers, FLAGS.name, FLAGS.labels)
    print(
        json.dumps(
            {k: m[k] for k in ("frontend", "num_examples", "num_frames")}
            | {"shards": len(m["shards"]), "skipped": len(m["skipped"])}
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
