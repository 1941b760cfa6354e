"""One embedding pass per task: every clip decoded once, each crop it needs embedded once.

EVAR's probe sees train and valid clips cut at a random offset and test clips
cut from the start (protocol.py). A clip's role decides its crop, and in a
cross-validated task every clip is test in one fold and train in the others,
so a clip needs at most two crops: from the start (a test role) and at a
random offset (a train or valid role). Both are embedded in the one pass, a
clip no longer than the crop only once (both crops are the clip, zero-padded),
and every fold and seed picks its rows from them (`Embedded.rows`): no fold
re-embeds a clip. The random offset of clip i is drawn once from
(`protocol.crop_seed`, i), the first probe seed, so the seeds share the crops
(EVAR re-extracts per seed and so redraws them; EVAR's fold tasks, ESC-50 and
UrbanSound8K, have no clip longer than its crop, where this changes nothing).

The result is cached per (checkpoint, task, clip list and sizes, crop rule)
under --cache_dir, so re-runs only train the probes.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import io
import json
import sys
from typing import Callable

import numpy as np
from tqdm import tqdm

from matpac_jax import storage
from matpac_jax.data import audio
from matpac_jax.evaluation.protocol import Protocol, cut_or_pad, random_offset
from matpac_jax.evaluation.tasks import Task

SR = 16000
CHUNK = 128  # clips decoded and embedded together


@dataclasses.dataclass
class Embedded:
    emb: np.ndarray          # (V, D): one row per distinct crop
    start_row: np.ndarray    # (N,) row of each clip's from-the-start crop (-1: not needed)
    random_row: np.ndarray   # (N,) row of each clip's random crop (-1: not needed)

    @classmethod
    def whole(cls, emb: np.ndarray) -> "Embedded":
        """Whole-clip embeddings, one row per clip in task order."""
        rows = np.arange(len(emb))
        return cls(np.asarray(emb, np.float32), rows, rows)

    def rows(self, clips: np.ndarray, role: str) -> np.ndarray:
        """Embeddings of `clips` in `role` ('test': start crops, else random crops)."""
        row = (self.start_row if role == "test" else self.random_row)[clips]
        assert (row >= 0).all(), f"{role} crops of these clips were not embedded"
        return self.emb[row]


def roles_needed(task: Task) -> tuple[np.ndarray, np.ndarray]:
    """(needs a start crop, needs a random crop) per clip."""
    if task.fold is not None:
        return np.ones(len(task.files), bool), np.ones(len(task.files), bool)
    test = task.split == "test"
    return test, ~test


def _crops(wave: np.ndarray, index: int, protocol: Protocol, need_start: bool,
           need_random: bool) -> tuple[list[np.ndarray], int | None, int | None]:
    """The distinct crops of one clip, and which of them is its start / random crop."""
    if protocol.unit_sec is None:
        return [wave], 0, 0
    unit = int(SR * protocol.unit_sec)  # EVAR: int(sample_rate * unit_sec)
    offsets = [0] if need_start else []
    if need_random:
        off = random_offset(len(wave), unit, protocol.crop_seed, index)
        if off not in offsets:
            offsets.append(off)
    return ([cut_or_pad(wave, unit, o) for o in offsets], 0 if need_start else None,
            offsets.index(off) if need_random else None)


def embed_task(embed: Callable[[list[np.ndarray]], np.ndarray], task: Task,
               protocol: Protocol, threads: int = 8) -> Embedded:
    """Decode (in `threads`), crop and embed every clip of `task` once."""
    need_start, need_random = roles_needed(task)
    n = len(task.files)
    start_row, random_row = np.full(n, -1, np.int64), np.full(n, -1, np.int64)
    parts, done = [], 0
    bar = _progress(task.name, n)
    with concurrent.futures.ThreadPoolExecutor(max(1, threads)) as pool:
        for lo in range(0, n, CHUNK):
            idx = range(lo, min(n, lo + CHUNK))
            waves = pool.map(lambda i: audio.load_audio(task.files[i], SR), idx)
            batch = []
            for i, wave in zip(idx, waves):
                crops, s, r = _crops(wave, i, protocol, need_start[i], need_random[i])
                if s is not None:
                    start_row[i] = done + len(batch) + s
                if r is not None:
                    random_row[i] = done + len(batch) + r
                batch += crops
            parts.append(np.asarray(embed(batch), np.float32))
            done += len(batch)
            bar.update(len(idx))
    bar.close()
    return Embedded(np.concatenate(parts), start_row, random_row)


def _progress(name: str, total: int):
    return tqdm(total=total, desc=f"{name}: embedding", unit="clip", file=sys.stderr,
                mininterval=10, disable=total < 2 * CHUNK)


def cache_key(checkpoint_id: str, task: Task, protocol: Protocol) -> str:
    """Hash of the checkpoint, the task's clips (paths and sizes), their roles
    and the crop rule: anything that changes an embedding changes the key."""
    need_start, need_random = roles_needed(task)
    sizes = storage.sizes(task.files)
    blob = json.dumps([checkpoint_id, task.name, [(f, sizes[f]) for f in task.files],
                       protocol.unit_sec, protocol.crop_seed if protocol.unit_sec else None,
                       need_start.tolist(), need_random.tolist()])
    return hashlib.sha1(blob.encode()).hexdigest()[:20]


def cached_embed_task(embed: Callable[[list[np.ndarray]], np.ndarray], checkpoint_id: str,
                      task: Task, protocol: Protocol, cache_dir: str | None,
                      threads: int = 8) -> tuple[Embedded, bool]:
    """`embed_task`, read from / written to `cache_dir` (local or gs://) when
    given. Returns (embedded, True if read from the cache)."""
    path = None
    if cache_dir:
        path = storage.join(cache_dir, f"{task.name}-{cache_key(checkpoint_id, task, protocol)}"
                                       ".npz")
        if storage.exists(path):
            with np.load(io.BytesIO(storage.read_bytes(path))) as z:
                return Embedded(z["emb"], z["start_row"], z["random_row"]), True
    out = embed_task(embed, task, protocol, threads)
    if path:
        storage.write_npz(path, emb=out.emb, start_row=out.start_row, random_row=out.random_row,
                          files=np.asarray(task.files), checkpoint=checkpoint_id)
    return out, False
