"""Grain input pipeline over prepared shards: crops of normalised log-mels.

Pipeline (all index-based, so the iterator state is one integer and resume is
exact): every record of every shard -> global shuffle (reshuffled each epoch)
-> repeat -> random crop (rng from seed and stream position) -> this process's
slice [shard_index::shard_count] of the stream -> batch.
Slicing the shuffled stream (not the files) means each epoch's records are
spread over processes with none read twice and none missing.
"""
from __future__ import annotations

import glob
import json
import os
from typing import Any

import grain
import numpy as np

from matpac_jax.data import frontends
from matpac_jax.data import tfrecord


def find_shards(path: str | os.PathLike) -> list[str]:
  """Shard files of a prepared folder (manifest.json's list when present)."""
  path = os.fspath(path)
  if os.path.isfile(path) and path.endswith(".tfrecord"):
    return [path]
  manifest = os.path.join(path, "manifest.json")
  if os.path.exists(manifest):
    with open(manifest, encoding="utf-8") as f:
      shards = [os.path.join(path, s["file"]) for s in json.load(f)["shards"]]
    missing = [s for s in shards if not os.path.exists(s)]
    if missing:
      raise FileNotFoundError(f"{manifest} lists shards that do not exist: {missing[:3]}")
  else:
    shards = sorted(glob.glob(os.path.join(glob.escape(path), "**", "*.tfrecord"), recursive=True))
  if not shards:
    raise FileNotFoundError(f"no *.tfrecord shards under {path}")
  return shards


def _check_frontend(shards: list[str], frontend: str) -> None:
  """Refuses shards prepared for another front end (manifest or sidecar says)."""
  for meta in {os.path.join(os.path.dirname(s), "manifest.json") for s in shards}:
    if os.path.exists(meta):
      with open(meta, encoding="utf-8") as f:
        written = json.load(f).get("frontend")
      if written not in (None, frontend):
        raise ValueError(f"{meta}: shards were prepared with frontend {written!r}, "
                         f"loader asked for {frontend!r}")


def load_index(path: str) -> np.ndarray:
  """(offset, length) per record: the cached `<shard>.index.npy` if current, else rebuilt."""
  cache = path + ".index.npy"
  size = os.path.getsize(path)
  if os.path.exists(cache) and os.path.getmtime(cache) >= os.path.getmtime(path):
    index = np.load(cache)
    end = int(index[-1, 0] + index[-1, 1] + 16) if len(index) else 0
    if end == size:
      return index
  index = tfrecord.build_index(path)
  try:
    np.save(cache, index)
  except OSError:
    pass  # Read-only shard folder: rebuild next time.
  return index


class ShardSource:
  """grain random-access source: record i of the concatenated shards, via os.pread."""

  def __init__(self, paths: list[str], verify_crc: bool = True):
    self.paths = list(paths)
    self.verify_crc = verify_crc
    indexes = [load_index(p) for p in self.paths]
    self._file = np.concatenate(
        [np.full(len(ix), k, np.int32) for k, ix in enumerate(indexes)] or [np.zeros(0, np.int32)])
    self._index = np.concatenate(indexes) if indexes else np.zeros((0, 2), np.int64)
    self._fds: dict[int, int] = {}

  def __len__(self) -> int:
    return len(self._index)

  def _fd(self, k: int) -> int:
    fd = self._fds.get(k)
    if fd is None:
      fd = self._fds.setdefault(k, os.open(self.paths[k], os.O_RDONLY))
    return fd

  def __getitem__(self, i: int) -> dict[str, Any]:
    k = int(self._file[i])
    offset, length = (int(v) for v in self._index[i])
    path = self.paths[k]
    data = tfrecord.read_record_at(self._fd(k), offset, length, self.verify_crc, name=path)
    try:
      return tfrecord.decode_example(data)
    except Exception as err:  # pylint: disable=broad-except
      raise tfrecord.CorruptRecordError(path, offset, f"undecodable example: {err}") from err

  def __getstate__(self):  # fds do not survive pickling into grain workers.
    return {**self.__dict__, "_fds": {}}

  def __del__(self, _close=os.close):  # os may be gone at interpreter exit.
    for fd in getattr(self, "_fds", {}).values():
      try:
        _close(fd)
      except OSError:
        pass


class CropNormalize(grain.transforms.RandomMap):
  """Random time crop of `crop_frames`, zero-padding short clips in the log domain, then normalising."""

  def __init__(self, frontend: str, crop_frames: int, short_clips: str,
               norm_stats: tuple[float, float] | None, with_ids: bool):
    if short_clips not in ("pad", "drop"):
      raise ValueError(f"short_clips must be 'pad' or 'drop', got {short_clips!r}")
    self.frontend, self.crop, self.short_clips = frontend, crop_frames, short_clips
    self.time_axis = 1 if frontends.FEATURE_LAYOUT[frontend] == "freq_time" else 0
    self.mean, self.std = frontends.NORM[frontend] if norm_stats is None else norm_stats
    self.with_ids = with_ids

  def random_map(self, element: dict, rng: np.random.Generator) -> dict | None:
    x = element["logmel"]
    t = x.shape[self.time_axis]
    if t >= self.crop:
      start = int(rng.integers(0, t - self.crop + 1))
      x = x[:, start:start + self.crop] if self.time_axis else x[start:start + self.crop]
      x = np.subtract(x, np.float32(self.mean), dtype=np.float32)  # float16 -> float32 in one pass.
      x *= np.float32(1.0 / self.std)
      return {"x": x, "id": element["id"]} if self.with_ids else {"x": x}
    elif self.short_clips == "drop":
      return None
    else:
      out = np.zeros((x.shape[0], self.crop) if self.time_axis else (self.crop, x.shape[1]),
                     np.float32)
      if self.time_axis:
        out[:, :t] = x
      else:
        out[:t] = x
      x = out
    x -= np.float32(self.mean)
    x *= np.float32(1.0 / self.std)
    return {"x": x, "id": element["id"]} if self.with_ids else {"x": x}


def make_dataset(path: str | os.PathLike, *, frontend: str, crop_frames: int, batch_size: int,
                 seed: int, shuffle: bool = True, num_epochs: int | None = None,
                 worker_count: int = 0, shard_index: int | None = None,
                 shard_count: int | None = None, short_clips: str = "pad",
                 norm_stats: tuple[float, float] | None = None, drop_remainder: bool = True,
                 verify_crc: bool = True, with_ids: bool = False,
                 read_threads: int = 2) -> grain.IterDataset:
  """The pipeline as a grain.IterDataset (iterate it, or use make_loader)."""
  frontends.check_frontend(frontend)
  if shard_index is None or shard_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    shard_index = jax.process_index() if shard_index is None else shard_index
    shard_count = jax.process_count() if shard_count is None else shard_count
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index {shard_index} not in [0, {shard_count})")
  shards = find_shards(path)
  _check_frontend(shards, frontend)
  source = ShardSource(shards, verify_crc=verify_crc)
  if len(source) == 0:
    raise ValueError(f"the shards under {path} hold no records")
  ds = grain.MapDataset.source(source)
  if shuffle:
    ds = ds.shuffle(seed=seed % 2**32)
  ds = ds.repeat(num_epochs)
  ds = ds.random_map(CropNormalize(frontend, crop_frames, short_clips, norm_stats, with_ids),
                     seed=(seed + 1) % 2**32)
  ds = ds[shard_index::shard_count]
  ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=64))
  ds = ds.batch(batch_size, drop_remainder=drop_remainder)
  if worker_count > 0:
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
  return ds


def make_loader(path: str | os.PathLike, **kwargs) -> grain.DatasetIterator:
  """Iterator of {'x': (B, 80, crop) | (B, crop, 128) float32} with get_state/set_state.

  Same keyword arguments as make_dataset. Save the state with
  `iterator.get_state()` (a small dict) or through orbax with
  `grain.checkpoint.CheckpointSave(iterator)` / `CheckpointRestore(iterator)`.
  """
  return iter(make_dataset(path, **kwargs))
