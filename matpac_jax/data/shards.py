"""Prepared shard files: finding them (local or gs://), their record indexes,
random access to records, and per-record fields from the shards' sidecars.

A shard is a TFRecord file written by `prepare` with two sidecars: its
record offsets (`<shard>.index.npy`) and a JSON of counts, clip ids and
labels (`<shard>.json`), so the loader knows every record without reading
one. On gs:// the sidecars of all shards are fetched concurrently and the
shards' sizes come from one listing per folder.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from typing import Any, Iterator

import numpy as np

from matpac_jax import errors, storage
from matpac_jax.data import tfrecord


def find_shards(path: str | os.PathLike) -> list[str]:
    """Shard files of a prepared folder, local or gs:// (manifest.json's list
    when present; else every `*.tfrecord` below it)."""
    path = storage.check(path, "data path")
    if storage.is_remote(path):
        path = path.rstrip("/")
    if path.endswith(".tfrecord") and storage.isfile(path):
        return [path]
    manifest = storage.join(path, "manifest.json")
    if storage.exists(manifest):
        shards = [storage.join(path, s["file"]) for s in storage.read_json(manifest)["shards"]]
        if storage.is_remote(path):  # one listing, not one request per shard
            present = set(storage.find(path, (".tfrecord",)))
            missing = [s for s in shards if s not in present]
        else:
            missing = [s for s in shards if not os.path.exists(s)]
        if missing:
            raise errors.DataNotFoundError(
                f"{manifest} lists shards that do not exist: {missing[:3]}")
    else:
        shards = storage.find(path, (".tfrecord",))
    if not shards:
        raise errors.DataNotFoundError(f"no *.tfrecord shards under {path}")
    return shards


def check_frontend(shards: list[str], frontend: str) -> None:
    """Refuses shards prepared for another front end (manifest or sidecar says)."""
    for meta in {storage.join(storage.parent(s), "manifest.json") for s in shards}:
        if storage.exists(meta):
            written = storage.read_json(meta).get("frontend")
            if written not in (None, frontend):
                raise errors.DataError(
                    f"{meta}: shards were prepared with frontend {written!r}, "
                    f"loader asked for {frontend!r}"
                )


def load_index(path: str, skip_corrupt: bool = False) -> np.ndarray:
    """(offset, length) per record: the cached `<shard>.index.npy` if current, else
    rebuilt from the headers. A damaged header (which also makes the cache look
    stale: the shard's mtime moved) raises naming its offset, or with
    `skip_corrupt` becomes a row that fails when read (skipped and counted like
    a bad payload); the old cache, if it still ends at the file's end, says where
    the next record starts."""
    cache = path + ".index.npy"
    size = os.path.getsize(path)
    hint = None
    if os.path.exists(cache):
        index = np.load(cache)
        if _ends_at(index, size):
            if os.path.getmtime(cache) >= os.path.getmtime(path):
                return index
            hint = index[:, 0]
    index = tfrecord.build_index(path, resync=skip_corrupt, hint=hint)
    try:
        np.save(cache, index)
    except OSError:
        pass  # Read-only shard folder: rebuild next time.
    return index


def _ends_at(index: np.ndarray, size: int) -> bool:
    return (int(index[-1, 0] + index[-1, 1] + 16) if len(index) else 0) == size


def load_indexes(paths: list[str], skip_corrupt: bool = False) -> list[np.ndarray]:
    """`load_index` of every shard; on gs:// the caches are fetched concurrently
    and sizes come from one listing per folder (objects are replaced whole, so
    a cache that still ends at the shard's end is current)."""
    if not paths or not storage.is_remote(paths[0]):
        return [load_index(p, skip_corrupt) for p in paths]
    sizes = storage.sizes(paths)
    caches = storage.read_many([p + ".index.npy" for p in paths])
    out = []
    for path, cached in zip(paths, caches):
        index = None if isinstance(cached, Exception) else np.load(io.BytesIO(cached))
        if index is None or not _ends_at(index, sizes[path]):
            hint = None if index is None else index[:, 0]
            index = tfrecord.build_index(path, resync=skip_corrupt, hint=hint)
            try:
                storage.write_npy(path + ".index.npy", index)
            except Exception:  # read-only bucket: rebuilt next time
                pass
        out.append(index)
    return out


_VERIFY_MODES = {
    True: "always",
    "always": "always",
    "once": "once",
    False: "never",
    "never": "never",
}


class ShardSource:
    """grain random-access source: record i of the concatenated shards, read
    with os.pread locally and with concurrent ranged reads on gs://.

    verify_crc: 'once' (default) checks the payload CRC32C of a record on its
    first read in this process and remembers it in a bitmap over the global
    record index, so a multi-epoch run pays the check in the first epoch only;
    True / 'always' checks on every read; False / 'never' skips the payload CRC
    (the length CRC and the framing are always checked). `crc_checks` counts the
    payload checks done by this process. `corrupt_records='skip'`: a damaged
    record header does not stop the indexing (`load_index`).

    `read_many` fetches a batch's records at once: on gs:// one ranged GET per
    record (`storage.read_ranges`, `storage.READ_CONCURRENCY` in flight), of
    exactly the record: its neighbours belong to other batches under the
    global shuffle, so a larger read would fetch bytes nobody uses.
    """

    def __init__(self, paths: list[str], verify_crc: bool | str = "once",
                 corrupt_records: str = "stop"):
        if verify_crc not in _VERIFY_MODES:
            raise ValueError(
                f"verify_crc must be True, False, 'once', 'always' or 'never', "
                f"got {verify_crc!r}"
            )
        self.paths = list(paths)
        self.remote = bool(self.paths) and storage.is_remote(self.paths[0])
        self.verify_crc = _VERIFY_MODES[verify_crc]
        indexes = load_indexes(self.paths, corrupt_records == "skip")
        self._file = np.concatenate(
            [np.full(len(ix), k, np.int32) for k, ix in enumerate(indexes)]
            or [np.zeros(0, np.int32)]
        )
        self._index = np.concatenate(indexes) if indexes else np.zeros((0, 2), np.int64)
        self._verified = np.zeros(len(self._index) if self.verify_crc == "once" else 0, bool)
        self.crc_checks = 0
        self._fds: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._index)

    def keep(self, mask: np.ndarray) -> "ShardSource":
        """Only the records where `mask` is true, renumbered (a held-out split)."""
        self._file, self._index = self._file[mask], self._index[mask]
        if len(self._verified):
            self._verified = self._verified[mask]
        return self

    def _fd(self, k: int) -> int:
        fd = self._fds.get(k)
        if fd is None:
            fd = self._fds.setdefault(k, os.open(self.paths[k], os.O_RDONLY))
        return fd

    def _where(self, i: int) -> tuple[str, int, int, bool]:
        """(shard, offset, length, whether to check the payload CRC now) of record i."""
        k = int(self._file[i])
        offset, length = (int(v) for v in self._index[i])
        mode = self.verify_crc
        return (self.paths[k], offset, length,
                mode == "always" or (mode == "once" and not self._verified[i]))

    def _checked(self, i: int, verify: bool) -> None:
        if verify:
            self.crc_checks += 1
            if self.verify_crc == "once":  # Set only after the check passed; a race checks twice.
                self._verified[i] = True

    def read(self, i: int) -> tuple[bytes, str, int]:
        """(payload, shard path, byte offset) of record i, checked per verify_crc."""
        if self.remote:
            result = self.read_many([i])[0]
            if isinstance(result, Exception):
                raise result
            return result
        path, offset, length, verify = self._where(i)
        data = tfrecord.read_record_at(self._fd(int(self._file[i])), offset, length, verify,
                                       name=path)
        self._checked(i, verify)
        return data, path, offset

    def read_many(self, records) -> list[tuple[bytes, str, int] | tfrecord.CorruptRecordError]:
        """`read` of each record, a corrupt one as its error (in the list, not raised)."""
        if not self.remote:
            out = []
            for i in records:
                try:
                    out.append(self.read(int(i)))
                except tfrecord.CorruptRecordError as err:
                    out.append(err)
            return out
        where = [self._where(int(i)) for i in records]
        bufs = storage.read_ranges([w[0] for w in where], [w[1] for w in where],
                                   [w[1] + 16 + w[2] for w in where])
        out = []
        for i, (path, offset, length, verify), buf in zip(records, where, bufs):
            try:
                if isinstance(buf, Exception):
                    raise tfrecord.CorruptRecordError(path, offset, f"unreadable: {buf!r}")
                data = tfrecord.parse_framed(buf, path, offset, length, verify)
                self._checked(int(i), verify)
                out.append((data, path, offset))
            except tfrecord.CorruptRecordError as err:
                out.append(err)
        return out

    def __getitem__(self, i: int) -> dict[str, Any]:
        return _decode(*self.read(i))

    def examples(self, batch: int = 256) -> Iterator[dict[str, Any]]:
        """Every record decoded, in order, `batch` reads at a time (concurrent
        on gs://, where one read at a time would wait out each request)."""
        for start in range(0, len(self), batch):
            for got in self.read_many(range(start, min(start + batch, len(self)))):
                if isinstance(got, Exception):
                    raise got
                yield _decode(*got)

    def __getstate__(self):  # fds do not survive pickling into grain workers.
        return {**self.__dict__, "_fds": {}}

    def __del__(self, _close=os.close):  # os may be gone at interpreter exit.
        for fd in getattr(self, "_fds", {}).values():
            try:
                _close(fd)
            except OSError:
                pass


def _decode(data: bytes, path: str, offset: int) -> dict[str, Any]:
    try:
        return tfrecord.decode_example(data)
    except Exception as err:
        raise tfrecord.CorruptRecordError(path, offset, f"undecodable example: {err}") from err


def split_labels(label: str | None) -> list[str]:
    """A record's `label` field: one label, or several separated by ';'."""
    return [s.strip() for s in (label or "").split(";") if s.strip()]


def record_labels(shards: list[str]) -> list[list[str]]:
    """Labels of every record, in loader order, from the shard sidecars that
    `prepare` writes (no record is read); shards without them are decoded."""
    return [split_labels(v) for v in _record_field(shards, "labels", "label")]


def record_ids(shards: list[str]) -> list[str]:
    """Clip id of every record, in loader order (sidecars, else the records)."""
    return _record_field(shards, "ids", "id")


def _record_field(shards: list[str], sidecar_key: str, record_key: str) -> list:
    """One field per record: the sidecars' list `sidecar_key` (fetched
    concurrently on gs://), else `record_key` of each decoded record."""
    out = []
    for path, side in zip(shards, storage.read_many([p + ".json" for p in shards])):
        info = {} if isinstance(side, Exception) else json.loads(side)
        if sidecar_key in info:
            out.extend(info[sidecar_key])
        else:
            out.extend(tfrecord.decode_example(r).get(record_key)
                       for r in tfrecord.read_records(path))
    return out


def held_out(ids: list[str], fraction: float, seed: int = 0) -> np.ndarray:
    """Whether each record is in a split carved out by clip id: the 64-bit
    blake2b hash of `"{seed}:{id}"` below `fraction` of its range. The same
    clips on every machine and run, whatever the shard layout."""
    limit = min(int(fraction * 2.0**64), 2**64 - 1)
    return np.fromiter(
        (int.from_bytes(hashlib.blake2b(f"{seed}:{i}".encode(), digest_size=8).digest(),
                        "little") < limit for i in ids), bool, len(ids))
