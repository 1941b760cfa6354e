"""Clip labels for `prepare`: label CSVs (several at once) and the class list.

- `--labels=A.csv,B.csv`: `file,label` CSVs (`;` between the labels of a
  multi-label clip) or Google's AudioSet segment CSVs (`# ` header lines;
  `YTID, start_seconds, end_seconds, "mid,mid"`): balanced + unbalanced is
  AS-2M. A clip is matched by its id, its stem, or the YouTube id in names
  like `YTID.wav`, `YYTID.wav`, `YTID_<start>[_<end>].wav`.
- `--classes=class_labels_indices.csv` (`index,mid,display_name`): the class
  order and names stored with the shards, so fine-tuning and evaluation
  score the 527 official classes in the official order (a class no train
  clip has is kept). Labels given as display names or class indices (the
  WebDataset JSONs) become MIDs; a label outside the list skips the clip.

Without `--classes` the classes are the sorted labels seen.
"""
from __future__ import annotations

import csv
import hashlib
import io
import os

from matpac_jax import errors, storage


def _text(path: str, flag: str) -> str:
    try:
        return storage.read_text(storage.check(path, flag))
    except FileNotFoundError:
        raise errors.TaskFileError(f"{flag} {storage.display(path)}: no such file") from None


def read_labels(path: str) -> dict[str, str]:
    """id -> ';'-joined labels from a `file,label` CSV or an AudioSet segment CSV."""
    lines = _text(path, "--labels").splitlines()
    body = [ln for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if not body:
        raise errors.TaskFileError(f"--labels {path}: no rows")
    header = [h.strip() for h in next(csv.reader([body[0]]))]
    if "label" in header:
        key = next((k for k in ("file", "id", "YTID") if k in header), None)
        if key is None:
            raise errors.TaskFileError(f"--labels {path}: needs a 'file' (or 'id') column "
                                       "next to 'label'")
        return {r[key].strip(): r["label"].strip() for r in csv.DictReader(body)}
    out = {}  # AudioSet: YTID, start, end, "label,label,..."
    for n, row in enumerate(csv.reader(body, skipinitialspace=True)):
        if len(row) < 4:
            raise errors.TaskFileError(f"--labels {path}: row {n + 1} is neither 'file,label' "
                                       f"nor AudioSet 'YTID, start, end, labels': {row}")
        out[row[0].strip()] = ";".join(x.strip() for x in row[3].split(",") if x.strip())
    return out


def read_classes(path: str) -> tuple[list[str], list[str]]:
    """(MIDs, display names) in `class_labels_indices.csv` order."""
    text = _text(path, "--classes")
    rows = list(csv.DictReader(io.StringIO(text)))
    if not rows or not {"index", "mid", "display_name"} <= set(rows[0]):
        raise errors.TaskFileError(f"--classes {path}: expected AudioSet's "
                                   "class_labels_indices.csv (index,mid,display_name)")
    rows.sort(key=lambda r: int(r["index"]))
    if [int(r["index"]) for r in rows] != list(range(len(rows))):
        raise errors.TaskFileError(f"--classes {path}: indices are not 0..{len(rows) - 1}")
    return [r["mid"].strip() for r in rows], [r["display_name"].strip() for r in rows]


def label_keys(clip_id: str) -> list[str]:
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


class Labels:
    """Labels from CSVs (which win) or from the source itself, as MIDs when the
    class list is known."""

    def __init__(self, csvs: list[str] | None = None, classes: str | None = None):
        self.required = bool(csvs)
        self.table: dict[str, str] = {}
        for path in csvs or ():
            for key, value in read_labels(path).items():  # a clip in two CSVs: the union
                old = self.table.get(key)
                self.table[key] = value if not old else ";".join(
                    dict.fromkeys(old.split(";") + value.split(";")))
        self.classes, self.names = read_classes(classes) if classes else (None, None)
        self._mid = ({**{n: m for m, n in zip(self.classes, self.names)},
                      **{m: m for m in self.classes}} if self.classes else {})
        h = hashlib.sha256()
        for path in (csvs or []) + ([classes] if classes else []):
            h.update(f"{storage.absolute(path)}\0{storage.size(path)}\0".encode())
        self.fingerprint = h.hexdigest()[:16]

    def of(self, clip_id: str, own: str | list | None) -> str | None:
        """The clip's ';'-joined labels: the CSVs' entry, else its own."""
        found = next((self.table[k] for k in label_keys(clip_id) if k in self.table), None)
        if found is None:
            found = ";".join(map(str, own)) if isinstance(own, (list, tuple)) else own
        if not found:
            return None
        return ";".join(self._mid.get(x.strip(), x.strip()) for x in found.split(";")
                        if x.strip())

    def from_meta(self, meta: dict) -> list | str | None:
        """Labels of a WebDataset JSON: `label_id` indices (with the class list),
        else `labels` / `label`."""
        ids = meta.get("label_id")
        if ids is not None and self.classes:
            ids = ids if isinstance(ids, list) else [ids]
            return [self.classes[int(i)] for i in ids if 0 <= int(i) < len(self.classes)]
        return meta.get("labels", meta.get("label"))

    def unknown(self, label: str | None) -> list[str]:
        """Labels of a clip that are not among the classes (none without a list)."""
        if not label or not self.classes:
            return []
        return [x for x in label.split(";") if x not in self._mid]
