"""Grain input pipeline over prepared shards: crops of normalised log-mels.

Pipeline (all index-based, so the iterator state is one integer and resume is
exact): stream positions 0, 1, ... (num_epochs * records, or endless) -> this
process's slice [shard_index::shard_count] -> batches of positions -> one map
per batch that turns positions into record indices (a per-epoch permutation
from the seed: a global shuffle, different every epoch), preads, CRC-checks
(once per record per process by default), decodes, crops (offset from seed and
stream position) and normalises into one float32 array.
Slicing the shuffled stream (not the files) means each epoch's records are
spread over processes with none read twice and none missing.

A corrupt record (bad framing or CRC, undecodable) stops the run naming its
file and byte offset (`corrupt_records='stop'`, the default); with 'skip' it
(a damaged header too: the index spans it with one row, `load_index`)
is dropped and logged (once per record and process), its slot takes the next
intact record in file order (so batches, crops and the iterator state stay
as they are, and the mode can change on resume), and the count of records
skipped so far (a record skipped in two epochs counts twice) is part of the
iterator state, so it survives resume: `data_metrics(iterator)`.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
from typing import Any

import grain
import numpy as np
from absl import logging

from matpac_jax import errors, storage
from matpac_jax.data import frontends
from matpac_jax.data import tfrecord

CORRUPT_RECORDS = ("stop", "skip")
_SKIPPED = "corrupt_skipped"  # per row: corrupt records whose slot it took
_MAX_SKIPS = 64


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


def _check_frontend(shards: list[str], frontend: str) -> None:
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
    if storage.is_remote(path):
        return load_indexes([path], skip_corrupt)[0]
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
    sizes: dict[str, int] = {}
    for folder in sorted({storage.parent(p) for p in paths}):
        sizes.update({k: v["size"] for k, v in storage.find(folder, detail=True).items()})
    caches = storage.read_many([p + ".index.npy" for p in paths])
    out = []
    for path, cached in zip(paths, caches):
        index = None if isinstance(cached, Exception) else np.load(io.BytesIO(cached))
        if index is None or not _ends_at(index, sizes[path]):
            hint = None if index is None else index[:, 0]
            index = tfrecord.build_index(path, resync=skip_corrupt, hint=hint)
            buf = io.BytesIO()
            np.save(buf, index)
            try:
                storage.write_bytes(path + ".index.npy", buf.getvalue())
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
        data, path, offset = self.read(i)
        try:
            return tfrecord.decode_example(data)
        except Exception as err:
            raise tfrecord.CorruptRecordError(path, offset, f"undecodable example: {err}") from err

    def __getstate__(self):  # fds do not survive pickling into grain workers.
        return {**self.__dict__, "_fds": {}}

    def __del__(self, _close=os.close):  # os may be gone at interpreter exit.
        for fd in getattr(self, "_fds", {}).values():
            try:
                _close(fd)
            except OSError:
                pass


@functools.lru_cache(maxsize=None)
def _numba_widen():
    """numba kernel dst[...] = float16(src bits) * mul + add, or None (no numba).

    numpy's float16 -> float32 cast has no SIMD path on the CPUs measured
    (docs/BENCHMARKS.md); widening the bits by hand in a JIT loop is several
    times faster. `mul` carries
    the 2**112 exponent rebias of the bit trick (exact for normals, subnormals,
    zeros; inf/nan keep an all-ones exponent).
    """
    if os.environ.get("MATPAC_NO_NUMBA", "") not in ("", "0") or not np.little_endian:
        return None
    try:
        import numba
    except ImportError:
        return None

    def kernel(src, dst, mul, add):  # src uint16 (R, C), dst float32 (R, C), contiguous rows.
        rows, cols = dst.shape
        for r in range(rows):
            s = src[r]
            d = dst[r]
            bits = d.view(np.uint32)
            for c in range(cols):
                b = np.uint32(s[c])
                a = (b & np.uint32(0x7FFF)) << np.uint32(13)
                a = a | (np.uint32(0x70000000) * np.uint32(a >= np.uint32(0x0F800000)))
                bits[c] = a | ((b & np.uint32(0x8000)) << np.uint32(16))
            for c in range(cols):
                d[c] = d[c] * mul + add

    try:
        return numba.njit(nogil=True, cache=True)(kernel)
    except Exception:  # no writable cache location
        return numba.njit(nogil=True)(kernel)


def _crop_starts(seed: int, positions: np.ndarray) -> np.ndarray:
    """uint64 per stream position (splitmix64 of seed and position): the crop offsets' source."""
    with np.errstate(over="ignore"):
        z = positions.astype(np.uint64) + np.uint64((seed * 0x9E3779B97F4A7C15 + 1) % 2**64)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


class CropNormalize:
    """Random time crop of `crop_frames`, zero-padding short clips in the log domain, then normalising.

    `batch(source, positions, records)` reads, crops and normalises a whole batch
    of records into one preallocated float32 array; the crop offset of a record
    comes from (seed, its position in the global stream), so it is the same
    whatever the batch size, process count or resume point.
    """

    def __init__(
        self,
        frontend: str,
        crop_frames: int,
        short_clips: str,
        norm_stats: tuple[float, float] | None,
        with_ids: bool,
        seed: int = 0,
        classes: tuple[str, ...] | None = None,
        corrupt_records: str = "stop",
    ):
        if short_clips not in ("pad", "drop"):
            raise ValueError(f"short_clips must be 'pad' or 'drop', got {short_clips!r}")
        if corrupt_records not in CORRUPT_RECORDS:
            raise ValueError(f"corrupt_records must be one of {CORRUPT_RECORDS}, "
                             f"got {corrupt_records!r}")
        self.skip_corrupt = corrupt_records == "skip"
        self._logged: set[tuple[str, int]] = set()
        self.frontend, self.crop, self.short_clips = frontend, crop_frames, short_clips
        self.time_axis = 1 if frontends.FEATURE_LAYOUT[frontend] == "freq_time" else 0
        self.mean, self.std = frontends.NORM[frontend] if norm_stats is None else norm_stats
        self.with_ids, self.seed = with_ids, seed
        self.classes = {c: i for i, c in enumerate(classes)} if classes else None

    def _write(self, x: np.ndarray, start: int, out: np.ndarray) -> None:
        """out (crop layout, float32) <- normalised crop of x (float16) from `start` (or padded)."""
        t = x.shape[self.time_axis]
        n = min(t - start, self.crop)
        scale = np.float32(1.0 / self.std)
        add = np.float32(-self.mean) * scale  # == (0 - mean) / std: the padding value.
        if self.time_axis:
            src, dst, rest = x[:, start : start + n], out[:, :n], out[:, n:]
        else:
            src, dst, rest = x[start : start + n], out[:n], out[n:]
        widen = _numba_widen()
        if widen is not None:
            widen(src.view(np.uint16), dst, np.float32(2.0**112) * scale, add)
        else:
            np.subtract(src, np.float32(self.mean), out=dst, dtype=np.float32)
            dst *= scale
        if n < self.crop:
            rest[...] = add

    def _shape(self, frames: int, num_freq: int) -> tuple[int, int]:
        return (num_freq, frames) if self.time_axis else (frames, num_freq)

    def _labels(self, element: dict) -> np.ndarray:
        """Multi-hot (C,) of a record's ';'-separated `label` over `classes`."""
        names = split_labels(element.get("label"))
        unknown = [c for c in names if c not in self.classes]
        if not names or unknown:
            raise errors.DataError(f"record {element.get('id')!r}: "
                             + (f"labels {unknown} not among the {len(self.classes)} classes"
                                if unknown else "no label"))
        y = np.zeros(len(self.classes), np.float32)
        y[[self.classes[c] for c in names]] = 1.0
        return y

    def _read(self, source: ShardSource, i: int, first=None) -> tuple[np.ndarray, dict, int]:
        """(logmel, example, corrupt records skipped) for record i (`first`: its
        `read_many` result, if fetched already); with skip_corrupt, a corrupt
        record's slot takes the next intact record in file order (the batch
        keeps its shape and the iterator its state)."""
        for skipped in range(_MAX_SKIPS):
            k = (i + skipped) % len(source)
            try:
                got = first if skipped == 0 and first is not None else source.read(k)
                if isinstance(got, Exception):
                    raise got
                data, path, offset = got
                try:
                    element = tfrecord.decode_example(data)
                    x = element["logmel"]
                    if x.ndim != 2:
                        raise ValueError(f"logmel has shape {x.shape}")
                except Exception as err:
                    raise tfrecord.CorruptRecordError(
                        path, offset, f"undecodable example: {err}"
                    ) from err
                return x, element, skipped
            except tfrecord.CorruptRecordError as err:
                if not self.skip_corrupt:
                    raise
                if (err.path, err.offset) not in self._logged:
                    self._logged.add((err.path, err.offset))
                    logging.warning("skipped (config.data.corrupt_records='skip'): %s", err)
        raise errors.DataError(f"{_MAX_SKIPS} records in a row from record {i} on are corrupt; "
                               "the shards look broken beyond config.data.corrupt_records='skip'")

    def batch(self, source: ShardSource, positions: np.ndarray, records: np.ndarray) -> dict | None:
        """{'x': (n, ...) float32, 'y'?, 'id'?} for the records kept (all of them
        unless 'drop'); with skip_corrupt also `_SKIPPED` per row."""
        rand = _crop_starts(self.seed, positions)
        out = None
        ids, ys, n = [], [], 0
        skipped = np.zeros(len(records), np.int32)
        fetched = source.read_many(records)
        for j, i in enumerate(records):
            x, element, skips = self._read(source, int(i), fetched[j])
            skipped[n] += skips  # a dropped short clip hands its count on to the next row
            t = x.shape[self.time_axis]
            if t < self.crop and self.short_clips == "drop":
                continue
            if out is None:
                out = np.empty(
                    (len(records),) + self._shape(self.crop, x.shape[1 - self.time_axis]),
                    np.float32,
                )
            start = int(rand[j] % np.uint64(t - self.crop + 1)) if t >= self.crop else 0
            self._write(x, start, out[n])
            if self.with_ids:
                ids.append(element["id"])
            if self.classes is not None:
                ys.append(self._labels(element))
            n += 1
        if n == 0:
            if skipped[0]:  # nothing to carry the count
                raise errors.DataError(
                    "a batch held only corrupt records and clips too short for "
                    f"data.crop_frames={self.crop}; the shards look broken")
            return None
        if n < len(records):
            skipped[n - 1] += skipped[n]
        result = {"x": out if n == len(records) else out[:n]}
        if self.with_ids:
            result["id"] = np.asarray(ids)
        if self.classes is not None:
            result["y"] = np.stack(ys)
        if self.skip_corrupt:
            result[_SKIPPED] = skipped[:n]
        return result

    def random_map(self, element: dict, rng: np.random.Generator) -> dict | None:
        """One element (the per-record form; rng gives the crop offset)."""
        x = element["logmel"]
        t = x.shape[self.time_axis]
        if t < self.crop and self.short_clips == "drop":
            return None
        out = np.empty(self._shape(self.crop, x.shape[1 - self.time_axis]), np.float32)
        self._write(x, int(rng.integers(0, t - self.crop + 1)) if t >= self.crop else 0, out)
        return {"x": out, "id": element["id"]} if self.with_ids else {"x": out}


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


def balanced_weights(labels: list[list[str]]) -> np.ndarray:
    """Sampling probability of each clip: the sum over its labels of 1 / (clips
    with that label), normalised (the class-balanced sampler of AudioSet recipes:
    every class is drawn about equally often)."""
    counts: dict[str, int] = {}
    for ls in labels:
        for c in ls:
            counts[c] = counts.get(c, 0) + 1
    w = np.array([sum(1.0 / counts[c] for c in ls) for ls in labels], np.float64)
    if not w.any():
        raise errors.DataError("balanced sampling needs labelled records "
                               "(python -m matpac_jax.data.prepare --labels=CSV)")
    return w / w.sum()


class _EpochOrder:
    """Stream position -> record index: epoch e = position // n visits the records
    in the order of a permutation drawn from (seed, e) (identity without shuffle).
    With `weights`, epoch e is n draws with replacement from (seed, e) instead
    (class-balanced sampling); still a function of the position, so resume is exact.

    Vectorised over a batch of positions, and each epoch's permutation is built
    once per process (16 MB for 2M records). It replaces grain's
    MapDataset.shuffle, whose per-index Feistel evaluation cost more than the
    rest of the pipeline per element (docs/BENCHMARKS.md).
    """

    def __init__(self, num_records: int, seed: int, shuffle: bool,
                 weights: np.ndarray | None = None):
        self.n, self.seed, self.shuffle, self.weights = num_records, seed, shuffle, weights
        self._cache: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        perm = self._cache.get(epoch)
        if perm is None:
            rng = np.random.default_rng([self.seed, epoch])
            perm = (rng.permutation(self.n) if self.weights is None
                    else rng.choice(self.n, self.n, p=self.weights))
            if len(self._cache) >= 2:  # Consecutive batches span at most two epochs.
                self._cache.pop(min(self._cache))
            self._cache[epoch] = perm
        return perm

    def __call__(self, positions: np.ndarray) -> np.ndarray:
        if not self.shuffle:
            return positions % self.n
        epochs = positions // self.n
        records = np.empty_like(positions)
        for e in np.unique(epochs):
            at = epochs == e
            records[at] = self._perm(int(e))[positions[at] % self.n]
        return records


class _ReadBatch(grain.transforms.Map):
    """Stream positions of one batch -> the batch of crops (or None if all dropped)."""

    def __init__(self, source: ShardSource, order: _EpochOrder, crop: CropNormalize):
        self.source, self.order, self.crop = source, order, crop

    def map(self, element):
        positions = np.asarray(element, np.int64)
        return self.crop.batch(self.source, positions, self.order(positions))


def _position(position: int, unused_record: int) -> int:
    return position


def make_dataset(
    path: str | os.PathLike,
    *,
    frontend: str,
    crop_frames: int,
    batch_size: int,
    seed: int,
    shuffle: bool = True,
    num_epochs: int | None = None,
    worker_count: int = 0,
    shard_index: int | None = None,
    shard_count: int | None = None,
    short_clips: str = "pad",
    norm_stats: tuple[float, float] | None = None,
    drop_remainder: bool = True,
    verify_crc: bool | str = "once",
    with_ids: bool = False,
    read_threads: int = 1,
    classes: tuple[str, ...] | None = None,
    balanced: bool = False,
    corrupt_records: str = "stop",
    holdout: float = 0.0,
) -> grain.IterDataset:
    """The pipeline as a grain.IterDataset (iterate it, or use make_loader).

    grain elements are batches of record indices: one map reads, crops and
    normalises a whole batch into one array (no per-record grain overhead, no
    stacking copy). `read_threads` batches are prepared ahead in threads (0: in
    the consumer's thread); `worker_count` > 0 moves that into grain processes.
    `classes`: also yield 'y', the multi-hot labels of each clip over `classes`;
    `balanced`: draw clips by inverse label frequency (`balanced_weights`).
    `corrupt_records`: 'stop' (raise tfrecord.CorruptRecordError) or 'skip'.
    `holdout`: leave out the records `held_out(ids, holdout)` picks (the valid
    split fine-tuning carves from a train split that has none).
    """
    frontends.check_frontend(frontend)
    if shard_index is None or shard_count is None:
        import jax

        shard_index = jax.process_index() if shard_index is None else shard_index
        shard_count = jax.process_count() if shard_count is None else shard_count
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index {shard_index} not in [0, {shard_count})")
    shards = find_shards(path)
    _check_frontend(shards, frontend)
    source = ShardSource(shards, verify_crc=verify_crc, corrupt_records=corrupt_records)
    labels = record_labels(shards) if balanced else None
    if holdout:
        kept = ~held_out(record_ids(shards), holdout)
        source.keep(kept)
        labels = labels and [ls for ls, k in zip(labels, kept) if k]
    if len(source) == 0:
        raise errors.DataError(f"the shards under {path} hold no records")
    crop = CropNormalize(
        frontend, crop_frames, short_clips, norm_stats, with_ids, seed=(seed + 1) % 2**32,
        classes=classes,
        corrupt_records=corrupt_records,
    )
    weights = balanced_weights(labels) if balanced else None
    order = _EpochOrder(len(source), seed % 2**32, shuffle, weights)
    ds = grain.MapDataset.range(len(source)).repeat(num_epochs)
    ds = ds.map_with_index(_position)  # Position in the global stream (epoch * n + i).
    ds = ds[shard_index::shard_count]
    drop = short_clips == "drop"
    ds = ds.batch(batch_size, drop_remainder=drop_remainder and not drop)
    ds = ds.map(_ReadBatch(source, order, crop))
    ds = ds.to_iter_dataset(
        grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=max(1, 2 * read_threads))
    )
    if drop:  # batches with dropped clips are topped up; state = parent + rows used
        ds = grain.experimental.RebatchIterDataset(ds, batch_size, drop_remainder)
    if worker_count > 0:
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
    return _CountCorrupt(ds, skip=corrupt_records == "skip")


class _CountCorrupt(grain.IterDataset):
    """The pipeline's last stage: takes the per-row counts of skipped corrupt
    records off each batch and keeps their running total in the iterator state."""

    def __init__(self, parent: grain.IterDataset, skip: bool):
        super().__init__(parent)
        self.skip = skip

    def __iter__(self) -> "_CountCorruptIterator":
        return _CountCorruptIterator(self._parent.__iter__(), self.skip)


class _CountCorruptIterator(grain.DatasetIterator):
    def __init__(self, parent: grain.DatasetIterator, skip: bool):
        super().__init__(parent)
        self.skip, self.corrupt_records = skip, 0

    def __next__(self) -> dict:
        batch = next(self._parent)
        if _SKIPPED in batch:
            batch = dict(batch)
            self.corrupt_records += int(np.sum(batch.pop(_SKIPPED)))
        return batch

    def get_state(self) -> dict[str, Any]:
        return {"pipeline": self._parent.get_state(), "corrupt_records": self.corrupt_records}

    def set_state(self, state: dict[str, Any]) -> None:
        if set(state) == {"pipeline", "corrupt_records"}:
            self._parent.set_state(state["pipeline"])
            self.corrupt_records = int(state["corrupt_records"])
        else:  # written before this stage existed
            self._parent.set_state(state)
            self.corrupt_records = 0


def data_metrics(iterator: Any) -> dict[str, float]:
    """{'data/corrupt_records': records skipped so far} when skipping, else {}."""
    if isinstance(iterator, _CountCorruptIterator) and iterator.skip:
        return {"data/corrupt_records": float(iterator.corrupt_records)}
    return {}


def make_loader(path: str | os.PathLike, **kwargs) -> grain.DatasetIterator:
    """Iterator of {'x': (B, 80, crop) | (B, crop, 128) float32} with get_state/set_state.

    Same keyword arguments as make_dataset. Save the state with
    `iterator.get_state()` (a small dict) or through orbax with
    `grain.checkpoint.CheckpointSave(iterator)` / `CheckpointRestore(iterator)`.
    """
    return iter(make_dataset(path, **kwargs))
