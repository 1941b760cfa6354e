"""Readers of the evaluation datasets as their publishers release them (`--task=NAME:PATH`).

PATH is the unpacked release folder; each reader's docstring names the files
it reads. Splits follow EVAR (nttcslab/eval-audio-repr, `evar/utils/
make_metadata.py`) for its tasks; split lists that are not part of a release
are stored in `splits/` with their sources (splits/README.md). Clips are
listed in a fixed order (the metadata's, else sorted paths), so a task's
embeddings can be cached and its folds reuse them.
"""
from __future__ import annotations

import csv
import gzip
import os
import posixpath
import re
from typing import Callable

import numpy as np

from matpac_jax import errors, storage
from matpac_jax.evaluation import tasks
from matpac_jax.evaluation.tasks import Task, read_csv, read_lines

SPLITS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "splits")
AUDIO = (".wav", ".flac", ".ogg", ".mp3", ".au")


def _stored(name: str) -> list[str]:
    """Lines of a split list stored in the package (splits/README.md)."""
    path = os.path.join(SPLITS_DIR, name)
    opener = gzip.open if name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [ln.strip() for ln in f if ln.strip()]


def _listing(root: str, suffixes: tuple[str, ...] = AUDIO) -> list[str]:
    """Paths of the audio files under `root`, relative to it, sorted ('/'-separated)."""
    if not storage.isdir(root):
        raise errors.TaskFileError(f"{storage.display(root)}: no such folder")
    base = root.rstrip("/") + "/" if storage.is_remote(root) else os.path.join(root, "")
    return sorted(p[len(base):].replace(os.sep, "/") for p in storage.find(root, suffixes))


def _join(root: str, rel: str) -> str:
    return storage.join(root, *rel.split("/"))


def esc50(root: str) -> Task:
    """ESC-50 (karolpiczak/ESC-50): `meta/esc50.csv` (filename, fold, target,
    category, ...) + `audio/*.wav`; label `category`, 5 folds."""
    meta = storage.join(root, "meta", "esc50.csv")
    rows = read_csv(meta, need=("filename", "fold", "category"))
    return tasks.make("esc50", [storage.join(root, "audio", r["filename"]) for r in rows],
                      [[r["category"]] for r in rows], fold=[int(r["fold"]) for r in rows],
                      source=meta, kind="esc50")


def us8k(root: str) -> Task:
    """UrbanSound8K: `metadata/UrbanSound8K.csv` (slice_file_name, ..., fold,
    classID, class) + `audio/foldN/`; label `class`, 10 folds."""
    meta = storage.join(root, "metadata", "UrbanSound8K.csv")
    rows = read_csv(meta, need=("slice_file_name", "fold", "class"))
    return tasks.make("us8k", [storage.join(root, "audio", f"fold{r['fold']}",
                                            r["slice_file_name"]) for r in rows],
                      [[r["class"]] for r in rows], fold=[int(r["fold"]) for r in rows],
                      source=meta, kind="us8k")


def spcv2(root: str) -> Task:
    """Speech Commands v0.02: `<word>/*.wav` (folders starting with a-z, so
    `_background_noise_` is skipped: EVAR's 35 words), `validation_list.txt`
    and `testing_list.txt` (paths relative to the root); the rest is train."""
    valid = set(read_lines(storage.join(root, "validation_list.txt")))
    test = set(read_lines(storage.join(root, "testing_list.txt")))
    rel = [p for p in _listing(root, (".wav",)) if re.fullmatch(r"[a-z][^/]*/[^/]+", p)]
    return tasks.make("spcv2", [_join(root, p) for p in rel], [[p.split("/")[0]] for p in rel],
                      split=["valid" if p in valid else "test" if p in test else "train"
                             for p in rel],
                      source=storage.join(root, "validation_list.txt"), kind="spcv2")


def vc1(root: str) -> Task:
    """VoxCeleb1 identification: `iden_split.txt` (`1|2|3 idXXXXX/<video>/NNNNN.wav`:
    train/valid/test; www.robots.ox.ac.uk/~vgg/data/voxceleb/meta/iden_split.txt,
    not inside the audio zips) + `wav/`; label the speaker id."""
    meta = storage.join(root, "iden_split.txt")
    rows = [ln.split(maxsplit=1) for ln in read_lines(meta)]
    if bad := [" ".join(r) for r in rows if len(r) != 2 or r[0] not in "123"][:3]:
        raise errors.TaskFileError(f"{storage.display(meta)}: lines not 'N path': {bad}")
    return tasks.make("vc1", [_join(root, "wav/" + p) for _, p in rows],
                      [[p.split("/")[0]] for _, p in rows],
                      split=[{"1": "train", "2": "valid", "3": "test"}[n] for n, _ in rows],
                      source=meta, kind="vc1")


def cremad(root: str) -> Task:
    """CREMA-D (CheyneyComputerScience/CREMA-D): `AudioWAV/*.wav` (or the wavs
    directly in PATH), named `<speaker>_<sentence>_<emotion>_<level>.wav`;
    label the emotion (6). EVAR's speaker-disjoint split (63/9/19 speakers,
    splits/cremad_speaker_splits.csv); the files EVAR's metadata does not list
    are left out (splits/cremad_not_in_evar.txt)."""
    folder = storage.join(root, "AudioWAV")
    folder = folder if storage.isdir(folder) else root
    speakers = dict(ln.split(",") for ln in _stored("cremad_speaker_splits.csv")[1:])
    dropped = set(_stored("cremad_not_in_evar.txt"))
    rel = [p for p in _listing(folder, (".wav",)) if "/" not in p and p not in dropped]
    if unknown := sorted({p.split("_")[0] for p in rel} - set(speakers))[:3]:
        raise errors.TaskFileError(f"{storage.display(folder)}: speakers not in CREMA-D's "
                                   f"91 (EVAR's split): {unknown}")
    bad = [p for p in rel if len(p.split("_")) != 4]
    if bad:
        raise errors.TaskFileError(f"{storage.display(folder)}: names not "
                                   f"<speaker>_<sentence>_<emotion>_<level>.wav: {bad[:3]}")
    return tasks.make("cremad", [storage.join(folder, p) for p in rel],
                      [[p.split("_")[2]] for p in rel],
                      split=[speakers[p.split("_")[0]] for p in rel], source=folder,
                      kind="cremad")


def gtzan(root: str) -> Task:
    """GTZAN: `<genre>/<genre>.000NN.{au,wav}`, directly in PATH or in its
    `genres/` (the original tarball) or `genres_original/` (the Kaggle copy).
    The fault-filtered split EVAR uses (splits/gtzan_*_filtered.txt:
    443/197/290 clips); the other 70 clips are not used."""
    for sub in ("genres", "genres_original"):
        if storage.isdir(storage.join(root, sub)):
            root = storage.join(root, sub)
    present = {posixpath.splitext(p)[0]: p for p in _listing(root, (".wav", ".au"))}
    files, labels, split = [], [], []
    for s in ("train", "valid", "test"):
        for entry in _stored(f"gtzan_{s}_filtered.txt"):
            stem = posixpath.splitext(entry)[0]
            files.append(_join(root, present.get(stem, entry)))
            labels.append([stem.split("/")[0]])
            split.append(s)
    return tasks.make("gtzan", files, labels, split=split, source=root, kind="gtzan")


def nsynth(root: str) -> Task:
    """NSynth: `nsynth-{train,valid,test}/examples.json` (note id ->
    attributes) + `nsynth-*/audio/<id>.wav`; label `instrument_family_str`."""
    files, labels, split = [], [], []
    for s in ("train", "valid", "test"):
        meta = storage.join(root, f"nsynth-{s}", "examples.json")
        if not storage.isfile(meta):
            raise errors.TaskFileError(f"{storage.display(meta)}: no such file")
        for key, ex in storage.read_json(meta).items():
            files.append(storage.join(root, f"nsynth-{s}", "audio", f"{key}.wav"))
            labels.append([ex["instrument_family_str"]])
            split.append(s)
    return tasks.make("nsynth", files, labels, split=split,
                      source=storage.join(root, "nsynth-train", "examples.json"), kind="nsynth")


def surge(root: str) -> Task:
    """Surge pitch dataset: `<tone>/<pitch>.ogg`; label the pitch (file stem),
    split by tone as EVAR (splits/surge_tone_splits.csv: 1692/195/197 tones)."""
    tone_split = dict(ln.split(",") for ln in _stored("surge_tone_splits.csv")[1:])
    rel = [p for p in _listing(root, (".ogg",)) if p.count("/") == 1]
    if unknown := sorted({p.split("/")[0] for p in rel} - set(tone_split))[:3]:
        raise errors.TaskFileError(f"{storage.display(root)}: tones not in EVAR's Surge "
                                   f"split (splits/surge_tone_splits.csv): {unknown}")
    return tasks.make("surge", [_join(root, p) for p in rel],
                      [[posixpath.splitext(p.split("/")[1])[0]] for p in rel],
                      split=[tone_split[p.split("/")[0]] for p in rel], source=root,
                      kind="surge")


def fsd50k(root: str) -> Task:
    """FSD50K: `FSD50K.ground_truth/dev.csv` (fname, labels, mids, split:
    train|val) and `eval.csv` (test) + `FSD50K.{dev,eval}_audio/<fname>.wav`;
    multi-label (comma-separated `labels`), mAP."""
    files, labels, split = [], [], []
    for name, audio in (("dev", "FSD50K.dev_audio"), ("eval", "FSD50K.eval_audio")):
        meta = storage.join(root, "FSD50K.ground_truth", f"{name}.csv")
        for r in read_csv(meta, need=("fname", "labels")):
            files.append(storage.join(root, audio, f"{r['fname']}.wav"))
            labels.append(r["labels"].split(","))
            split.append("test" if name == "eval" else {"val": "valid"}.get(r["split"],
                                                                            r["split"]))
    return tasks.make("fsd50k", files, labels, split=split, multilabel=True,
                      source=storage.join(root, "FSD50K.ground_truth", "dev.csv"), kind="fsd50k")


def _segments(path: str) -> list[tuple[str, list[str]]]:
    """(YTID, MIDs) of each row of one of Google's AudioSet segment CSVs
    (`# ` comment lines, then `YTID, start, end, "mid,mid"`)."""
    out = []
    for n, row in enumerate(csv.reader(read_lines(path), skipinitialspace=True)):
        if row and not row[0].startswith("#"):
            if len(row) != 4:
                raise errors.TaskFileError(f"{storage.display(path)}: line {n + 1}: expected "
                                           "YTID, start_seconds, end_seconds, positive_labels")
            out.append((row[0], row[3].split(",")))
    return out


def as20k(root: str) -> Task:
    """AudioSet 20K (balanced train + eval): Google's `balanced_train_segments.csv`,
    `eval_segments.csv` and `class_labels_indices.csv` in PATH, audio in
    `balanced_train_segments/` and `eval_segments/` named by YouTube id (the
    first 11 characters of the file name, as EVAR's make_as_metadata.py).
    Segments without a file are left out (YouTube deletions), as EVAR does."""
    index = read_csv(storage.join(root, "class_labels_indices.csv"), need=("mid",))
    classes = [r["mid"] for r in index]
    files, labels, split = [], [], []
    for subset, s in (("balanced_train_segments", "train"), ("eval_segments", "test")):
        by_id = {p.split("/")[-1][:11]: p for p in _listing(storage.join(root, subset))}
        for ytid, labs in _segments(storage.join(root, f"{subset}.csv")):
            if (rel := by_id.get(ytid)) is not None:
                files.append(_join(storage.join(root, subset), rel))
                labels.append(labs)
                split.append(s)
    if unknown := sorted({c for ls in labels for c in ls} - set(classes))[:3]:
        raise errors.TaskFileError(f"{root}: labels not in class_labels_indices.csv: {unknown}")
    return tasks.make("as20k", files, labels, split=split, classes=classes, multilabel=True,
                      source=storage.join(root, "balanced_train_segments.csv"), kind="as20k")


def openmic(root: str) -> Task:
    """OpenMIC-2018: `openmic-2018-aggregated-labels.csv` (sample_key,
    instrument, relevance, num_responses), `class-map.json`,
    `partitions/split01_{train,test}.csv` + `audio/<key[:3]>/<key>.ogg`. As
    the dataset's own evaluation: relevance >= 0.5 is present, < 0.5 absent,
    an instrument without a row for a clip is unknown (`Task.known`): left out
    of that class's loss and average precision."""
    class_map = storage.join(root, "class-map.json")
    if not storage.isfile(class_map):
        raise errors.TaskFileError(f"{storage.display(class_map)}: no such file")
    cmap = storage.read_json(class_map)
    classes = sorted(cmap, key=cmap.get)
    keys, split = [], []
    for s in ("train", "test"):
        part = read_lines(storage.join(root, "partitions", f"split01_{s}.csv"))
        keys += [k for k in part if k != "sample_key"]
        split += [s] * (len(keys) - len(split))
    row = {k: i for i, k in enumerate(keys)}
    known = np.zeros((len(keys), len(classes)), bool)
    labels: list[list[str]] = [[] for _ in keys]
    meta = storage.join(root, "openmic-2018-aggregated-labels.csv")
    for r in read_csv(meta, need=("sample_key", "instrument", "relevance")):
        if (i := row.get(r["sample_key"])) is not None:
            known[i, cmap[r["instrument"]]] = True
            if float(r["relevance"]) >= 0.5:
                labels[i].append(r["instrument"])
    return tasks.make("openmic", [storage.join(root, "audio", k[:3], f"{k}.ogg") for k in keys],
                      labels, split=split, classes=classes, known=known, multilabel=True,
                      source=meta, kind="openmic")


def mtt(root: str) -> Task:
    """MagnaTagATune: `annotations_final.csv` (tab-separated: clip_id, 188 tags,
    mp3_path) + the mp3 folders `0/`..`f/`. The top-50 tags and the
    15,244/1,529/4,332 clip split of Lee et al. 2017 (splits/mtt_*; also in
    minzwon/sota-music-tagging-models); multi-label, mAP."""
    meta = storage.join(root, "annotations_final.csv")
    rows = read_csv(meta, delimiter="\t", need=("clip_id", "mp3_path"))
    tags = _stored("mtt_top50_tags.txt")
    if missing := [t for t in tags if t not in rows[0]][:3]:
        raise errors.TaskFileError(f"{storage.display(meta)}: no columns for tags {missing}")
    by_path = {r["mp3_path"]: r for r in rows}
    files, labels, split = [], [], []
    for s in ("train", "valid", "test"):
        listed = _stored(f"mtt_{s}.txt.gz")
        if absent := [p for p in listed if p not in by_path][:3]:
            raise errors.TaskFileError(f"{storage.display(meta)}: clips of the MTT split "
                                       f"missing from it: {absent}")
        for p in listed:
            files.append(_join(root, p))
            labels.append([t for t in tags if by_path[p][t].strip() == "1"])
            split.append(s)
    return tasks.make("mtt", files, labels, split=split, classes=tags, multilabel=True,
                      source=meta, kind="mtt")


READERS: dict[str, Callable[[str], Task]] = {
    f.__name__: f for f in (esc50, us8k, spcv2, vc1, cremad, gtzan, nsynth, surge, fsd50k,
                            openmic, mtt, as20k)}


def parse(spec: str) -> Task:
    """One `--task` value: `NAME:PATH`, `evar:META.csv@AUDIO_DIR` or a meta.csv folder."""
    head, sep, rest = spec.partition(":")
    if sep and head == "evar":
        meta, at, audio_dir = rest.rpartition("@")
        if not at or not meta or not audio_dir:
            raise errors.TaskFileError(f"--task={spec}: expected evar:META.csv@AUDIO_DIR")
        return tasks.load_evar(storage.absolute(meta), storage.absolute(audio_dir))
    if sep and head in READERS:
        return READERS[head](storage.absolute(rest))
    if sep and not storage.is_remote(spec) and not os.path.exists(spec):
        raise errors.TaskFileError(
            f"--task={spec}: unknown dataset {head!r} (known: {', '.join(READERS)}, "
            "evar:META.csv@AUDIO_DIR, or a folder with meta.csv)")
    return tasks.load_folder(spec)
