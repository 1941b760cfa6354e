"""An evaluation task (clips, labels, splits or folds) and the two generic metadata forms.

`--task` takes three spellings (`datasets.parse`): `NAME:PATH` for a dataset as its
publisher releases it (`datasets.READERS`), `evar:META.csv@AUDIO_DIR` for any
metadata file of EVAR's form, and a folder holding `meta.csv`
(`file,label,split`, this project's own form). Every metadata file is read
through `matpac_jax.storage`, so release folders may be on gs://.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import os

import numpy as np

from matpac_jax import errors, storage

SPLITS = ("train", "valid", "test")


@dataclasses.dataclass
class Task:
    """Clips in a fixed order. Either `split` (train/valid/test per clip) or
    `fold` (cross-validation: each fold is the test set once) is set."""
    name: str
    files: list[str]                    # full paths, local or gs://
    labels: list[list[str]]             # positive labels of each clip
    classes: list[str]
    multilabel: bool
    split: np.ndarray | None = None     # (N,) 'train' | 'valid' | 'test'
    fold: np.ndarray | None = None      # (N,) int
    known: np.ndarray | None = None     # (N, C) bool: which multi-label entries are annotated
    kind: str = "folder"                # reader name; picks the protocol (protocol.for_task)
    source: str = ""                    # the metadata read, for messages

    def targets(self) -> np.ndarray:
        """(N,) class indices, or (N, C) multi-hot for multi-label tasks."""
        index = {c: i for i, c in enumerate(self.classes)}
        if not self.multilabel:
            return np.array([index[ls[0]] for ls in self.labels], np.int32)
        y = np.zeros((len(self.labels), len(self.classes)), np.float32)
        for i, ls in enumerate(self.labels):
            y[i, [index[c] for c in ls]] = 1.0
        return y

    def folds(self) -> list[int | None]:
        """The test folds of a cross-validated task, else [None]."""
        return [None] if self.fold is None else sorted(int(f) for f in np.unique(self.fold))


def make(name: str, files: list[str], labels: list[list[str]], *, source: str, kind: str,
         split=None, fold=None, classes: list[str] | None = None, known=None,
         multilabel: bool | None = None) -> Task:
    """A checked Task: train and test rows exist (in every fold), every clip has a label."""
    if not files:
        raise errors.TaskFileError(f"{source}: no clips")
    if multilabel is None:
        multilabel = any(len(ls) != 1 for ls in labels)
    if not multilabel and (bad := [f for f, ls in zip(files, labels) if len(ls) != 1][:3]):
        raise errors.TaskFileError(f"{source}: clips without a label: {bad}")
    split = None if split is None else np.asarray(split)
    fold = None if fold is None else np.asarray(fold, np.int64)
    if split is not None:
        if bad := sorted(set(split.tolist()) - set(SPLITS)):
            raise errors.TaskFileError(f"{source}: unknown split(s) {bad}; expected {SPLITS}")
        for s in ("train", "test"):
            if not (split == s).any():
                raise errors.TaskFileError(f"{source}: no {s!r} rows")
    elif fold is None or len(np.unique(fold)) < 2:
        raise errors.TaskFileError(f"{source}: needs a split column, or a fold column with "
                                   "at least two folds")
    return Task(name=name, files=files, labels=labels,
                classes=classes or sorted({c for ls in labels for c in ls}),
                multilabel=multilabel, split=split, fold=fold,
                known=None if known is None else np.asarray(known, bool),
                kind=kind, source=source)


def read_csv(path: str, delimiter: str = ",", need: tuple[str, ...] = ()) -> list[dict[str, str]]:
    """Rows of a CSV file (header first) as dicts; errors.TaskFileError naming the
    file when it is missing or lacks a `need`ed column."""
    if not storage.isfile(path):
        raise errors.TaskFileError(f"{storage.display(path)}: no such file")
    text = storage.read_text(path).lstrip("\ufeff")
    rows = list(csv.DictReader(io.StringIO(text), delimiter=delimiter,
                               skipinitialspace=True))
    if missing := [c for c in need if c not in (rows[0] if rows else {})]:
        raise errors.TaskFileError(f"{storage.display(path)}: needs columns {list(need)} "
                                   f"(missing {missing})")
    return rows


def read_lines(path: str) -> list[str]:
    if not storage.isfile(path):
        raise errors.TaskFileError(f"{storage.display(path)}: no such file")
    return [ln.strip() for ln in storage.read_text(path).splitlines() if ln.strip()]


def load_folder(directory: str | os.PathLike) -> Task:
    """`directory/meta.csv` (`file,label,split`; `;` between the labels of a
    multi-label clip); file paths are relative to `directory`."""
    directory = storage.absolute(os.fspath(directory))
    path = storage.join(directory, "meta.csv")
    if not storage.isfile(path):
        raise errors.TaskFileError(f"{storage.display(path)}: no such file (a task folder holds "
                                   "meta.csv: file,label,split; or give NAME:PATH for a "
                                   "released dataset, python -m matpac_jax.evaluate --help)")
    rows = read_csv(path, need=("file", "label", "split"))
    labels = [[s.strip() for s in r["label"].split(";") if s.strip()] for r in rows]
    return make(os.path.basename(directory.rstrip("/")),
                [storage.join(directory, r["file"]) for r in rows], labels,
                split=[r["split"] for r in rows], source=path, kind="folder")


def load_evar(meta_csv: str, audio_dir: str) -> Task:
    """A metadata file of EVAR's form (`evar/metadata/<task>.csv`): `file_name`,
    `label` (comma-separated for multi-label) and `split` or else `fold`. The
    task is named after the file; a name EVAR's ds_tasks.py knows gets its
    clip duration (protocol.EVAR_UNIT_SEC)."""
    rows = read_csv(meta_csv, need=("file_name", "label"))
    has_split = "split" in rows[0]
    if not has_split and "fold" not in rows[0]:
        raise errors.TaskFileError(f"{storage.display(meta_csv)}: needs a split or a fold column")
    labels = [[s.strip() for s in r["label"].split(",") if s.strip()] for r in rows]
    name = os.path.splitext(os.path.basename(meta_csv))[0]
    try:
        fold = None if has_split else [int(float(r["fold"])) for r in rows]
    except ValueError as e:
        raise errors.TaskFileError(f"{storage.display(meta_csv)}: fold column: {e}") from None
    return make(name, [storage.join(audio_dir, r["file_name"]) for r in rows], labels,
                split=[r["split"] for r in rows] if has_split else None, fold=fold,
                source=meta_csv, kind=name, multilabel=any(len(ls) > 1 for ls in labels))
