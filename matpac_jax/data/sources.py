"""Where `prepare`'s clips come from, read in place (local or gs://).

Three forms, the ones AudioSet is distributed in:
- audio files: a folder (recursive), a glob, or a CSV with a `file` column
  (paths relative to the CSV) and optionally `label`;
- Hugging Face parquet shards (`agkphysics/AudioSet`: `video_id`, `audio`
  = {bytes, path} with the encoded file, `labels` = MIDs, `human_labels`),
  read a batch of rows at a time, never unpacked to disk;
- WebDataset tars (`confit/audioset-16khz-wds`): the members of a sample
  share a key (`<key>.flac|.wav|...`, `<key>.json` with `id` and labels as
  `label` / `labels` (MIDs or display names) or `label_id` (class indices)),
  streamed member by member.

A unit of work is a chunk of audio files or one container file; `prepare`
writes one shard per unit. `items(unit)` yields each clip's id, label and
decoded waveform or the reason it cannot be used (a bad clip inside a
parquet row group or a tar is skipped and listed like a bad file).
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import os
import tarfile
from typing import Iterator

import numpy as np
import pyarrow.parquet as pq

from matpac_jax import errors, storage
from matpac_jax.data import audio, frontends
from matpac_jax.data.labels import Labels

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".m4a", ".aac", ".opus", ".aif",
                    ".aiff", ".au", ".wma", ".webm", ".mp4")
CONTAINERS = {".parquet": "parquet", ".tar": "wds"}
MIN_SAMPLES = frontends.N_FFT  # One full 25 ms window, else "too short".
_FETCH_AHEAD = 32  # gs:// audio files fetched concurrently while a shard is written


@dataclasses.dataclass(frozen=True)
class Clip:
    """One audio file and its id (path relative to the input) and label."""
    path: str
    id: str
    label: str | None = None


@dataclasses.dataclass(frozen=True)
class Unit:
    """What one shard is written from: audio files, or one parquet / tar file."""
    kind: str  # "files" | "parquet" | "wds"
    clips: tuple[Clip, ...] = ()
    path: str | None = None
    size: int = 0

    def fingerprint(self, frontend: str, labels: Labels) -> str:
        h = hashlib.sha256(frontend.encode())
        if self.kind == "files":  # the same digest shards written before containers had
            for c in self.clips:
                h.update(f"\0{c.id}\0{c.label}".encode())
        else:
            h.update(f"\0{self.kind}\0{self.path}\0{self.size}\0{labels.fingerprint}".encode())
        return h.hexdigest()[:16]

    def count(self) -> int | None:
        """Clips in the unit, where known without reading it (for progress)."""
        return len(self.clips) if self.kind == "files" else None


@dataclasses.dataclass
class Item:
    """One clip as read: features input (`wave`) or why it is skipped (`error`)."""
    id: str
    where: str  # the file, or container#row / container:member, for the skipped list
    label: str | None = None
    wave: np.ndarray | None = None
    error: str | None = None


def list_inputs(inputs: list[str]) -> tuple[str, list]:
    """(kind, things): ('files', [Clip]) or ('parquet' | 'wds', [(path, size)]).
    Each input is a folder, a glob, a CSV file list, or a container file."""
    found: dict[str, list] = {"files": [], "parquet": [], "wds": []}
    for given in inputs:
        path = storage.check(given, "--input")
        if path.lower().endswith(".csv"):
            if not storage.isfile(path):
                raise errors.DataNotFoundError(f"--input {path}: no such folder or CSV file")
            found["files"] += _csv_clips(path)
            continue
        if any(ch in path for ch in "*?["):
            listing = {p: {"size": 0} for p in storage.glob(path)}
            root = path[:min(path.index(ch) for ch in "*?[" if ch in path)].rpartition("/")[0]
        elif storage.isdir(path):
            listing, root = storage.find(path, detail=True), path
        elif storage.isfile(path):
            listing, root = {path: {"size": storage.size(path)}}, storage.parent(path)
        else:
            raise errors.DataNotFoundError(f"--input {path}: no such folder or CSV file")
        containers = {p: v for p, v in listing.items()
                      if os.path.splitext(p)[1].lower() in CONTAINERS}
        if containers:
            for p, info in sorted(containers.items()):
                kind = CONTAINERS[os.path.splitext(p)[1].lower()]
                found[kind].append((p, info["size"] or storage.size(p)))
        else:
            for p in sorted(listing):
                if p.lower().endswith(AUDIO_EXTENSIONS):
                    rel = p[len(root):].lstrip("/\\") if p.startswith(root) else p
                    found["files"].append(Clip(p, rel.replace(os.sep, "/")))
    kinds = [k for k, v in found.items() if v]
    if len(kinds) > 1:
        raise errors.DataError(f"--input {','.join(inputs)}: mixes {' and '.join(kinds)} inputs; "
                               "prepare each form into its own --name")
    if not kinds:
        raise errors.DataError(f"--input {','.join(inputs)}: no audio, parquet or tar files found")
    return kinds[0], found[kinds[0]]


def _csv_clips(path: str) -> list[Clip]:
    base = storage.parent(path)
    reader = csv.DictReader(io.StringIO(storage.read_text(path)))
    if "file" not in (reader.fieldnames or []):
        raise errors.DataError(f"{path}: CSV needs a 'file' column (has {reader.fieldnames})")
    return [Clip(storage.join(base, row["file"]), row["file"], row.get("label") or None)
            for row in reader]


def units(kind: str, things: list, num_shards: int) -> list[Unit]:
    """Audio files in `num_shards` chunks; one unit per container file."""
    if kind == "files":
        return [Unit("files", tuple(things[i] for i in chunk))
                for chunk in np.array_split(np.arange(len(things)), num_shards)]
    return [Unit(kind, path=p, size=int(s)) for p, s in things]


def items(unit: Unit, labels: Labels) -> Iterator[Item]:
    """Every clip of a unit, decoded to 16 kHz (or with the reason it is skipped)."""
    if unit.kind == "files":
        yield from _file_items(unit.clips, labels)
    elif unit.kind == "parquet":
        yield from _parquet_items(unit.path, labels)
    else:
        yield from _tar_items(unit.path, labels)


def _decoded(item: Item, data: bytes | None, name: str) -> Item:
    """`item` with its waveform, or the decode failure as its error."""
    try:
        wave = audio.decode(data, name) if data is not None else audio.load_audio(name)
        if wave.size < MIN_SAMPLES:
            raise audio.AudioDecodeError(
                name, f"too short: {wave.size} samples < {MIN_SAMPLES} (one 25 ms window)")
        item.wave = wave
    except audio.AudioDecodeError as err:
        item.error = err.reason
    return item


def _file_items(clips: tuple[Clip, ...], labels: Labels) -> Iterator[Item]:
    remote = bool(clips) and storage.is_remote(clips[0].path)
    for start in range(0, len(clips), _FETCH_AHEAD if remote else 1):
        chunk = clips[start:start + (_FETCH_AHEAD if remote else 1)]
        datas = storage.read_many([c.path for c in chunk]) if remote else [None] * len(chunk)
        for clip, data in zip(chunk, datas):
            item = Item(clip.id, clip.path, labels.of(clip.id, clip.label))
            if isinstance(data, Exception):
                item.error = "no such file" if isinstance(data, FileNotFoundError) else repr(data)
                yield item
                continue
            yield _checked_label(_decoded(item, data, clip.path), labels)


def _checked_label(item: Item, labels: Labels) -> Item:
    if item.error is None:
        if labels.required and not item.label:
            item.error = "no label in the --labels CSV"
        elif unknown := labels.unknown(item.label):
            item.error = f"labels {unknown} are not in --classes"
    return item


_ID_COLUMNS = ("video_id", "id", "key", "ytid", "YTID")
_LABEL_COLUMNS = ("labels", "label")


def _parquet_items(path: str, labels: Labels) -> Iterator[Item]:
    with storage.open_file(path, "rb") as f:
        pf = pq.ParquetFile(f)
        names = pf.schema_arrow.names
        id_col = next((c for c in _ID_COLUMNS if c in names), None)
        audio_col = "audio" if "audio" in names else None
        if id_col is None or audio_col is None:
            raise errors.DataError(f"{path}: a parquet shard needs an id column ({_ID_COLUMNS}) "
                                   f"and an 'audio' column; it has {names}")
        label_col = next((c for c in _LABEL_COLUMNS if c in names), None)
        columns = [id_col, audio_col] + ([label_col] if label_col else [])
        row = 0
        for batch in pf.iter_batches(batch_size=16, columns=columns):
            ids = batch.column(id_col).to_pylist()
            cells = batch.column(audio_col)
            datas = (cells.field("bytes") if hasattr(cells, "field") else cells).to_pylist()
            found = batch.column(label_col).to_pylist() if label_col else [None] * len(ids)
            for clip_id, data, own in zip(ids, datas, found):
                where = f"{path}#row={row}"
                item = Item(str(clip_id), where, labels.of(str(clip_id), own))
                row += 1
                yield _checked_label(_decoded(item, data or b"", f"{where}.flac"), labels)


_AUDIO_MEMBER = tuple(e.lstrip(".") for e in AUDIO_EXTENSIONS)


def _tar_items(path: str, labels: Labels) -> Iterator[Item]:
    """Samples of a WebDataset tar, streamed (members of a key are adjacent)."""
    with storage.open_file(path, "rb") as f:
        sample: dict[str, tuple[str, bytes]] = {}
        key = None
        try:
            with tarfile.open(fileobj=f, mode="r|*") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    base = os.path.basename(member.name)
                    stem, _, ext = base.partition(".")
                    k = f"{os.path.dirname(member.name)}/{stem}".lstrip("/")
                    if k != key and sample:
                        yield _tar_item(path, key, sample, labels)
                        sample = {}
                    key = k
                    sample[ext.lower()] = (member.name, tar.extractfile(member).read())
        except (tarfile.TarError, EOFError, OSError) as err:
            yield Item(f"{path}:<after {key}>", f"{path}:<after {key}>",
                       error=f"unreadable tar from here on: {type(err).__name__}: {err}")
            return
        if sample:
            yield _tar_item(path, key, sample, labels)


def _tar_item(path: str, key: str, sample: dict, labels: Labels) -> Item:
    audio_ext = next((e for e in sample if e in _AUDIO_MEMBER), None)
    meta, own, clip_id = {}, None, key
    if "json" in sample:
        try:
            meta = json.loads(sample["json"][1])
        except ValueError:
            meta = {}
        clip_id = str(meta.get("id") or key)
        own = labels.from_meta(meta)
    where = f"{path}:{sample[audio_ext][0] if audio_ext else key}"
    item = Item(clip_id, where, labels.of(clip_id, own))
    if audio_ext is None:
        item.error = f"no audio member for key {key!r} (has {sorted(sample)})"
        return item
    return _checked_label(_decoded(item, sample[audio_ext][1], where), labels)
