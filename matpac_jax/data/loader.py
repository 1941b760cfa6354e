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
import os
from typing import Any

import grain
import jax
import numpy as np
from absl import flags, logging

from matpac_jax import errors
from matpac_jax.data import frontends, tfrecord
from matpac_jax.data.shards import (ShardSource, check_frontend, find_shards, held_out,
                                    record_ids, record_labels, split_labels)

CORRUPT_RECORDS = ("stop", "skip")
_SKIPPED = "corrupt_skipped"  # per row: corrupt records whose slot it took
_MAX_SKIPS = 64


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
        import numba  # optional: a faster kernel where it is installed (0.8 s to import)
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

    def _read(self, source: ShardSource, i: int, first) -> tuple[np.ndarray, dict, int]:
        """(logmel, example, corrupt records skipped) for record i (`first`: its
        `read_many` result); with skip_corrupt, a corrupt
        record's slot takes the next intact record in file order (the batch
        keeps its shape and the iterator its state)."""
        for skipped in range(_MAX_SKIPS):
            k = (i + skipped) % len(source)
            try:
                got = first if skipped == 0 else source.read(k)
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
        shard_index = jax.process_index() if shard_index is None else shard_index
        shard_count = jax.process_count() if shard_count is None else shard_count
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index {shard_index} not in [0, {shard_count})")
    shards = find_shards(path)
    check_frontend(shards, frontend)
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
        # grain's workers read absl's global flags; the project's commands other
        # than `main` parse their own FlagValues and leave those unparsed, which
        # grain refuses: take their defaults.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
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
