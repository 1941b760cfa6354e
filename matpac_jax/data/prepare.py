"""Audio (folders, file lists, parquet, WebDataset) -> float16 log-mel TFRecord shards.

  python -m matpac_jax.data.prepare --input=SOURCE[,SOURCE...] --output=OUT --frontend=matpac

SOURCE and OUT are local paths or gs://BUCKET/... (read and written in
place: nothing is unpacked to local disk). SOURCE is an audio folder
(recursive), a glob, a CSV with a `file` column (paths relative to it) and
optionally `label`, or parquet / WebDataset tar files (a folder of them, a
glob, or single files): the forms AudioSet is distributed in
(data/sources.py). Audio files are written ~1024 clips per shard (or
`--num_shards`); a parquet or tar file becomes one shard.

Each shard is written whole (`storage.atomic_write`), then a sidecar
`<shard>.json` (counts, ids, labels, skipped clips) and `<shard>.index.npy`
(record offsets for the loader). A shard counts as finished only when its
sidecar exists, so re-running the same command resumes: finished shards are
kept, the others are redone. Bad clips (unreadable, truncated, empty, NaN,
too short, no label when labels are required), also inside a parquet row
group or a tar, are skipped and listed in the manifest.

Labels: `--labels=CSV[,CSV...]` (`file,label` CSVs or AudioSet's segment
CSVs, several at once: balanced + unbalanced = AS-2M) and/or the labels a
parquet row or WebDataset JSON carries; `--classes=class_labels_indices.csv`
stores AudioSet's class order and names with the shards (data/labels.py).

One OUT holds several preparations under different `--name`s (say
`--name=bal` and `--name=unbal`): manifest.json lists the shards of all of
them. Re-running a name with the same inputs resumes it; another input
under a name already there, or another front end, is refused.

Several machines: run with `--worker_index i --num_workers m` on each. Worker i
writes the shards s with s % m == i and `manifest-<name>-<i>-of-<m>.json`.
When all are done, `--output OUT --merge [--name NAME]` adds them to
manifest.json; the loader also works without it (it reads every `*.tfrecord`
under OUT).
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import sys
import time

import numpy as np
from absl import flags
from tqdm import tqdm

from matpac_jax import cli, errors, storage
from matpac_jax.data import frontends, sources, tfrecord
from matpac_jax.data.labels import Labels

log = logging.getLogger(__name__)

CLIPS_PER_SHARD = 1024  # ~160 MB of 10 s float16 log-mels.


def shard_path(output: str, name: str, index: int, count: int) -> str:
    return storage.join(output, f"{name}-{index:05d}-of-{count:05d}.tfrecord")


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


def write_shard(path: str, unit: sources.Unit, frontend: str, labels: Labels,
                progress=None) -> dict:
    """Writes one shard + its index and sidecar; returns the sidecar dict."""
    info = {
        "file": path.rstrip("/").rpartition("/")[2],
        "fingerprint": unit.fingerprint(frontend, labels),
        "num_examples": 0,
        "num_frames": 0,
        "skipped": [],
        "ids": [],
    }
    if unit.path:
        info["source"] = unit.path
    found_labels = []
    time_axis = -1 if frontends.FEATURE_LAYOUT[frontend] == "freq_time" else 0
    with tfrecord.TFRecordWriter(path) as writer:
        for item in sources.items(unit, labels):
            if item.error is not None:
                log.warning("skipped %s: %s", item.where, item.error)
                info["skipped"].append({"file": item.where, "reason": item.error})
            else:
                feat = frontends.compute(frontend, item.wave)
                writer.write(tfrecord.encode_example(feat, item.id, item.label))
                found_labels.append(item.label or "")
                info["ids"].append(item.id)
                info["num_examples"] += 1
                info["num_frames"] += int(feat.shape[time_axis])
            if progress is not None:
                progress(1)
    index = np.asarray(writer.offsets, np.int64).reshape(-1, 2)
    storage.write_npy(path + ".index.npy", index)
    if any(found_labels):
        info["labels"] = found_labels
    storage.write_json(path + ".json", info)
    return info


def _finished(path: str, fingerprint: str) -> dict | None:
    try:  # the sidecar is written last: one request says whether a shard is done
        info = storage.read_json(path + ".json")
    except FileNotFoundError:
        return None
    if not storage.exists(path):
        return None
    if info.get("fingerprint") != fingerprint:
        raise errors.DataError(
            f"{path} was written from other inputs or another front end; "
            "use a new --output folder (or another --name)"
        )
    return info


_LABELS: Labels | None = None  # a pool worker's copy, sent once (AS-2M's CSVs are large)


def _set_labels(labels: Labels) -> None:
    global _LABELS
    _LABELS = labels
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")


def _write_shard_task(args):
    path, unit, frontend = args
    return write_shard(path, unit, frontend, _LABELS)


def _progress_bar(total: int | None, unit: str):
    if not sys.stderr.isatty():
        return None
    return tqdm(total=total, unit=unit, desc="prepare", smoothing=0.1)


def prepare(
    input: str | list[str],  # pylint: disable=redefined-builtin
    output: str,
    frontend: str,
    num_shards: int | None = None,
    workers: int = 1,
    worker_index: int = 0,
    num_workers: int = 1,
    name: str = "data",
    labels: str | list[str] | None = None,
    clips: list[sources.Clip] | None = None,
    classes: str | None = None,
) -> dict:
    """Writes this worker's missing shards and its manifest; returns the
    manifest (all of OUT's preparations when one worker). `labels`: label
    CSVs; `classes`: class_labels_indices.csv; `clips`: the audio files,
    instead of listing `input` (which then only names the source)."""
    frontends.check_frontend(frontend)
    if not 0 <= worker_index < num_workers:
        raise errors.DataError(f"worker_index {worker_index} not in [0, {num_workers})")
    inputs = [input] if isinstance(input, str) else list(input)
    output = storage.check(output, "--output")
    label_csvs = [labels] if isinstance(labels, str) else list(labels or [])
    table = Labels(label_csvs, classes)
    kind, things = ("files", list(clips)) if clips is not None else sources.list_inputs(inputs)
    if not things:
        raise errors.DataError(f"--input {','.join(inputs)}: no audio files found")
    if kind != "files" and num_shards not in (None, len(things)):
        raise errors.DataError(f"--num_shards={num_shards}: {kind} inputs make one shard per "
                               f"file ({len(things)} here); leave --num_shards out")
    num_shards = num_shards or (max(1, math.ceil(len(things) / CLIPS_PER_SHARD))
                                if kind == "files" else len(things))
    _check_adding(output, name, inputs, num_shards, frontend)
    storage.makedirs(output)
    work = sources.units(kind, things, num_shards)
    mine = [s for s in range(num_shards) if s % num_workers == worker_index]
    infos, todo = {}, []
    for s in mine:
        path = shard_path(output, name, s, num_shards)
        info = _finished(path, work[s].fingerprint(frontend, table))
        if info is None:
            todo.append((path, work[s], frontend))
        else:
            infos[s] = info
    counts = [t[1].count() for t in todo]
    known = None not in counts
    bar = _progress_bar(sum(counts) if known else len(todo), "clip" if known else "file")
    start = time.perf_counter()
    done = {}  # shard file name -> sidecar
    if workers <= 1 or len(todo) <= 1:
        for task in todo:
            info = write_shard(*task, table, progress=bar.update if bar and known else None)
            done[info["file"]] = info
            if bar and not known:
                bar.update(1)
    else:
        ctx = multiprocessing.get_context("spawn")  # No fork: callers may hold JAX/grain threads.
        sizes = {t[0].rpartition("/")[2]: c for t, c in zip(todo, counts)}
        with ctx.Pool(min(workers, len(todo)), initializer=_set_labels,
                      initargs=(table,)) as pool:
            for info in pool.imap_unordered(_write_shard_task, todo):
                done[info["file"]] = info
                if bar:
                    bar.update(sizes[info["file"]] if known else 1)
    if bar:
        bar.close()
    for s in mine:
        if s not in infos:
            infos[s] = done[shard_path(output, name, s, num_shards).rpartition("/")[2]]
    elapsed = time.perf_counter() - start
    part = _part([infos[s] for s in mine], inputs, num_shards)
    if num_workers > 1:
        storage.write_json(_worker_manifest(output, name, worker_index, num_workers),
                           {**part, "name": name, "frontend": frontend,
                            "worker_index": worker_index, "num_workers": num_workers,
                            **_classes(table, infos.values())})
        manifest = {**frontend_params(frontend), **part, "name": name}
    else:
        manifest = _update_manifest(output, name, part, frontend, _classes(table, infos.values()))
    new = sum(d["num_examples"] + len(d["skipped"]) for d in done.values())
    manifest["clips_per_second"] = round(new / elapsed, 2) if new and elapsed else None
    log.info("%s: %d examples in %d shards, %d skipped", output, manifest["num_examples"],
             len(manifest["shards"]), len(manifest["skipped"]))
    return manifest


def _part(infos: list[dict], inputs: list[str], num_shards: int) -> dict:
    """One preparation (`--name`): its inputs, shards and skipped clips."""
    return {
        "input": [storage.absolute(i) for i in inputs],
        "num_shards": num_shards,
        "num_examples": sum(i["num_examples"] for i in infos),
        "num_frames": sum(i["num_frames"] for i in infos),
        "shards": [{k: i[k] for k in ("file", "num_examples", "num_frames")} for i in infos],
        "skipped": [s for i in infos for s in i["skipped"]],
    }


def _classes(table: Labels, infos) -> dict:
    """{'classes', 'class_names'?}: the official list, else the labels seen."""
    if table.classes:
        return {"classes": table.classes, "class_names": table.names}
    seen = sorted({c for i in infos for lab in i.get("labels", ()) for c in lab.split(";") if c})
    return {"classes": seen} if seen else {}


def _parts(manifest: dict) -> dict[str, dict]:
    """name -> part of a manifest.json (one written before parts existed is one part)."""
    if "parts" in manifest:
        return manifest["parts"]
    inputs = manifest.get("input")
    return {manifest.get("name", "data"): {
        "input": inputs if isinstance(inputs, list) else [inputs],
        **{k: manifest[k] for k in ("num_shards", "num_examples", "num_frames", "shards",
                                    "skipped")}}}


def _check_adding(output: str, name: str, inputs: list[str], num_shards: int,
                  frontend: str) -> None:
    """Before any work: refuse to mix front ends in one OUT, or to put other
    inputs (or another shard count) under a name OUT already has."""
    path = storage.join(output, "manifest.json")
    if not storage.exists(path):
        return
    old = storage.read_json(path)
    if old.get("frontend") != frontend:
        raise errors.DataError(f"{output} holds shards of another front end "
                               f"({old.get('frontend')!r}, manifest.json); prepare "
                               f"--frontend={frontend} into another --output")
    part = _parts(old).get(name)
    given = [storage.absolute(i) for i in inputs]
    if part is not None and (part["input"] != given or part["num_shards"] != num_shards):
        raise errors.DataError(
            f"{path}: --name={name} already holds {part['num_shards']} shards of "
            f"{','.join(part['input'])}; add these under another --name, or use a new --output")


def _update_manifest(output: str, name: str, part: dict, frontend: str,
                     classes: dict) -> dict:
    """manifest.json with `part` added under `name` (others kept); returns it."""
    path = storage.join(output, "manifest.json")
    old = storage.read_json(path) if storage.exists(path) else {}
    parts = {**(_parts(old) if old else {}), name: part}
    classes = _merge_classes(path, old, classes)
    manifest = {
        **frontend_params(frontend),
        "parts": parts,
        "num_examples": sum(p["num_examples"] for p in parts.values()),
        "num_frames": sum(p["num_frames"] for p in parts.values()),
        "shards": [s for p in parts.values() for s in p["shards"]],
        "skipped": [s for p in parts.values() for s in p["skipped"]],
        **classes,
    }
    storage.write_json(path, manifest)
    return manifest


def _merge_classes(path: str, old: dict, new: dict) -> dict:
    """The official list wins (two must agree); otherwise the union of those seen."""
    if "class_names" in old and "class_names" in new and old["classes"] != new["classes"]:
        raise errors.DataError(f"{path}: its class list differs from this --classes")
    for official in (new, old):
        if "class_names" in official:
            return {k: official[k] for k in ("classes", "class_names")}
    seen = sorted(set(old.get("classes", [])) | set(new.get("classes", [])))
    return {"classes": seen} if seen else {}


def _worker_manifest(output: str, name: str, index: int, count: int) -> str:
    return storage.join(output, f"manifest-{name}-{index}-of-{count}.json")


def merge_manifests(output: str, name: str | None = None) -> dict:
    """Adds the worker manifests of `name` (default: the only name that has
    them) to manifest.json."""
    output = storage.check(output, "--output")
    found = storage.glob(storage.join(output, f"manifest-{name or '*'}-*-of-*.json"))
    if not found:
        raise errors.DataNotFoundError(f"no manifest-<name>-<i>-of-<m>.json under {output}")
    manifests = [storage.read_json(p) for p in found]
    names = sorted({x["name"] for x in manifests})
    if len(names) > 1:
        raise errors.DataError(f"{output}: worker manifests of several names {names}; "
                               "pick one with --name")
    m = manifests[0]["num_workers"]
    have = sorted(x["worker_index"] for x in manifests if x["num_workers"] == m)
    if have != list(range(m)) or len(manifests) != m:
        raise errors.DataError(f"{output}: expected manifests of workers 0..{m - 1}, found {found}")
    if len({x["frontend"] for x in manifests}) != 1:
        raise errors.DataError(f"{output}: worker manifests disagree on the front end")
    shards = sorted((s for x in manifests for s in x["shards"]), key=lambda s: s["file"])
    part = {"input": manifests[0]["input"], "num_shards": manifests[0]["num_shards"],
            "num_examples": sum(s["num_examples"] for s in shards),
            "num_frames": sum(s["num_frames"] for s in shards), "shards": shards,
            "skipped": [s for x in manifests for s in x["skipped"]]}
    classes: dict = {}
    for x in manifests:
        classes = _merge_classes(output, classes, {k: x[k] for k in ("classes", "class_names")
                                                  if k in x})
    _check_adding(output, names[0], part["input"], part["num_shards"], manifests[0]["frontend"])
    return _update_manifest(output, names[0], part, manifests[0]["frontend"], classes)


FLAGS = flags.FlagValues()
flags.DEFINE_list("input", None, "audio folders (recursive), globs, CSV file lists ('file'"
                  "[,'label']), or parquet / WebDataset tar files or folders; local or gs://",
                  flag_values=FLAGS)
flags.DEFINE_string("output", None, "shard folder (local or gs://)", flag_values=FLAGS,
                    required=True)
flags.DEFINE_enum("frontend", None, sorted(frontends.FRONTENDS), "front end of the shards",
                  flag_values=FLAGS)
flags.DEFINE_integer("num_shards", None, "shards of an audio-file input (default: ~1024 clips "
                     "each); parquet and tar inputs make one shard per file", flag_values=FLAGS)
flags.DEFINE_integer("workers", 1, "processes on this machine", flag_values=FLAGS)
flags.DEFINE_integer("worker_index", 0, "this machine's index", flag_values=FLAGS)
flags.DEFINE_integer("num_workers", 1, "machines sharing the job", flag_values=FLAGS)
flags.DEFINE_string("name", "data", "shard file name prefix; one --output can hold several",
                    flag_values=FLAGS)
flags.DEFINE_bool("merge", False, "only merge the worker manifests (of --name, if given)",
                  flag_values=FLAGS)
flags.DEFINE_list("labels", None, "label CSVs: 'file,label' or AudioSet's segment CSVs "
                  "(YTID, start, end, positive_labels); several are merged", flag_values=FLAGS)
flags.DEFINE_string("classes", None, "AudioSet's class_labels_indices.csv: the class order and "
                    "names stored with the shards", flag_values=FLAGS)


def main(argv=None) -> int:
    cli.parse(FLAGS, argv, "python -m matpac_jax.data.prepare", __doc__)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if FLAGS.merge:
        m = merge_manifests(FLAGS.output, FLAGS.name if FLAGS["name"].present else None)
    else:
        if not FLAGS.input or not FLAGS.frontend:
            print("error: --input and --frontend are required (unless --merge)", file=sys.stderr)
            return 2
        m = prepare(FLAGS.input, FLAGS.output, FLAGS.frontend, FLAGS.num_shards, FLAGS.workers,
                    FLAGS.worker_index, FLAGS.num_workers, FLAGS.name, FLAGS.labels,
                    classes=FLAGS.classes)
    print(
        json.dumps(
            {k: m[k] for k in ("frontend", "num_examples", "num_frames")}
            | {"shards": len(m["shards"]), "skipped": len(m["skipped"])}
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
