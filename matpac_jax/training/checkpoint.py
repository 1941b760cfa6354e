"""Orbax checkpoints: train state, data-iterator state, config and the
pretrained parts' architecture (`Method.architecture`), together.

Orbax writes each step to a temporary directory and renames it when every
process has finished (on gs://, which has no rename: in place, then a
`commit_success.txt`), so a half-written checkpoint (SIGKILL mid-save) is
never listed and never restored; a leftover temporary folder (a crash or a
full disk mid-save) is ignored by the next run and replaced when it saves
that step again. The RNG needs no saving: each step's key is
`fold_in(key(seed), step)`.

A finished checkpoint that fails to restore (a truncated array file, a
broken JSON item) is moved aside to `<step>.corrupt-<time>` (never deleted)
and the next older one is tried: `Checkpointer.restore_latest` for training;
readers (embed, evaluate, fine-tuning) skip it without renaming
(`restore.first_intact`, matpac_jax/restore.py). Resuming refuses a config that
differs from the checkpoint's in a key outside `SAFE_ON_RESUME`
(`check_resume_config`), before any array is read.
"""
from __future__ import annotations

import errno
import json
import os
import time
from typing import Any

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from matpac_jax import errors
from matpac_jax.restore import (checkpoint_dir, latest_checkpoint, load_architecture,
                                load_config, reason)

# Config keys a resumed run may change: how long it runs, what it logs and
# saves, where the (same) data is read from and how, how the state is laid
# out over devices and how memory is traded for compute (exact rewrites).
# Every other key changes the saved state (model, method, front end,
# objective shapes) or the run that the checkpoint continues (seed, batch,
# crops, optimiser, objective), so a changed value needs a new workdir. A
# key that only one of the two configs has (written by another version of
# the code) is not compared. docs/ARCHITECTURE.md lists them too.
SAFE_ON_RESUME = (
    "total_steps", "log_every", "checkpoint_every", "keep_checkpoints",
    "init_from", "init_teacher",  # read only before the first checkpoint
    "async_checkpoints", "nonfinite", "peak_flops", "profile",
    "mesh", "fsdp", "grad_accum_steps", "model.remat", "model.cpu_workarounds",
    "data.path", "data.workers", "data.demo_clips", "data.corrupt_records",
    "tokenizer_checkpoint", "teacher_checkpoint",
    "finetune.eval_batch", "finetune.seeds",  # scoring and the list of runs, not a run's state
)


class _IteratorSnapshot:
    """The data-iterator state as of `save()`; the async writer reads it later,
    when the live iterator has already moved on."""

    def __init__(self, iterator: Any):
        self._state = json.dumps(iterator.get_state(), indent=1).encode()

    def get_state(self) -> bytes:  # grain's handler writes non-DatasetIterator states as bytes
        return self._state


class Checkpointer:
    """Saves {state, data, config} every `every` steps, keeping the last `keep`.

    A save that fails (a full disk) raises `errors.CheckpointError` naming the
    step, the cause and the last complete checkpoint, from `save` or `wait`
    (the async writer's errors surface there).
    """

    def __init__(self, workdir: str, *, every: int, keep: int, asynchronous: bool = True):
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=every,
            max_to_keep=keep,
            enable_async_checkpointing=asynchronous,
            create=True,
            cleanup_tmp_directories=True,  # half-written steps of earlier runs
        )
        self.workdir = workdir
        self.manager = ocp.CheckpointManager(
            checkpoint_dir(workdir),
            item_names=("state", "data", "config", "architecture"),
            options=options,
        )
        self._unfinished: int | None = None  # step of a save that may still fail

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, data_iter: Any, config: ml_collections.ConfigDict,
             *, architecture: dict | None = None, force: bool = False) -> bool:
        self.wait()  # the previous save's error, if any, is that step's
        args = {"state": ocp.args.StandardSave(state),
                "config": ocp.args.JsonSave(config.to_dict()),
                "architecture": ocp.args.JsonSave(architecture or {})}
        if data_iter is not None:
            args["data"] = grain.checkpoint.CheckpointSave(_IteratorSnapshot(data_iter))
        self._unfinished = step
        try:
            saved = self.manager.save(step, args=ocp.args.Composite(**args), force=force)
        except Exception as e:
            raise self._save_error(step, e) from e
        if not saved:
            self._unfinished = None
        return saved

    def restore(self, step: int, abstract_state: Any, data_iter: Any) -> Any:
        args = {"state": ocp.args.StandardRestore(abstract_state)}
        if data_iter is not None:
            args["data"] = grain.checkpoint.CheckpointRestore(data_iter)
        restored = self.manager.restore(step, args=ocp.args.Composite(**args))
        return restored["state"]

    def newest_config(self) -> tuple[int, dict, dict | None] | None:
        """(step, config, architecture) saved with the newest step whose config
        reads, for `check_resume_config` before anything is built."""
        for step in sorted(self.manager.all_steps(), reverse=True):
            path = checkpoint_dir(self.workdir) / str(step)
            try:
                return step, load_config(path).to_dict(), load_architecture(path)
            except Exception:  # damaged: restore_latest moves it aside
                continue
        return None

    def restore_latest(self, abstract_state: Any, data_iter: Any) -> tuple[int, Any] | None:
        """(step, state) of the newest checkpoint that restores (the data iterator
        too), or None when there is none. Newer steps that failed are moved
        aside (`quarantine`) with one warning each, once an older one restored;
        if none restores, nothing is moved and `errors.CheckpointError` lists
        each step and why."""
        failed = []
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                state = self.restore(step, abstract_state, data_iter)
            except Exception as e:
                failed.append((step, reason(e)))
                continue
            for bad, why in failed:
                moved = quarantine(checkpoint_dir(self.workdir) / str(bad)) if is_primary() else None
                logging.warning("checkpoint step %d is damaged (%s); moved aside to %s; "
                                "resuming from step %d", bad, why, moved, step)
            if failed:
                self.manager.reload()
            return step, state
        if failed:
            raise errors.CheckpointError(
                f"{checkpoint_dir(self.workdir)}: no checkpoint restores: "
                + "; ".join(f"step {s}: {why}" for s, why in failed)
                + ". Nothing was moved; use a new workdir or move them aside")
        return None

    def wait(self) -> None:
        """Block until the pending save is on disk (raises if it failed)."""
        try:
            self.manager.wait_until_finished()
        except Exception as e:
            raise self._save_error(self._unfinished, e) from e
        self._unfinished = None

    def close(self, quiet: bool = False) -> None:
        """Finish the pending save and stop orbax's threads. `quiet`: on the way
        out of another error, log a failed save instead of raising."""
        try:
            self.wait()
        except errors.CheckpointError as e:
            if not quiet:
                raise
            logging.error("%s", e)
        finally:
            try:
                self.manager.close()
            except Exception as e:  # its threads are gone either way
                if not quiet:
                    raise self._save_error(self._unfinished, e) from e

    def _save_error(self, step: int | None, err: BaseException) -> errors.CheckpointError:
        self._unfinished = None
        latest = latest_checkpoint(self.workdir)
        last = (f"the last complete checkpoint is step {latest[0]} ({latest[1]}); re-running "
                "the same command resumes from it" if latest else
                "there is no complete checkpoint yet; re-running the same command starts "
                "from scratch")
        disk = _disk_error(err)
        cause = f"{disk} (the disk holding {checkpoint_dir(self.workdir)})" if disk else reason(err)
        return errors.CheckpointError(
            f"saving checkpoint step {step} failed: {cause}. Nothing was lost: {last}"
            + (" once space is free." if disk and "file too large" not in disk else "."))


_DISK_ERRNOS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
                errno.EFBIG: "file too large (the file system's or `ulimit -f`'s limit)"}


def _disk_error(err: BaseException | None) -> str | None:
    """'no space left on device' etc. if `err` or a cause is one (tensorstore
    reports it in text, Python as an OSError)."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in _DISK_ERRNOS:
            return _DISK_ERRNOS[err.errno]
        text = str(err).lower()
        for code, name in _DISK_ERRNOS.items():
            if name in text or os.strerror(code).lower() in text:
                return name
        err = err.__cause__ or err.__context__
    return None


def quarantine(step_dir: epath.Path) -> epath.Path:
    """Rename a damaged step folder to `<step>.corrupt-<UTC time>` (orbax and
    `restore.latest_checkpoint` no longer list it; nothing is deleted)."""
    step_dir = epath.Path(step_dir)
    target = step_dir.parent / f"{step_dir.name}.corrupt-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    step_dir.rename(target)
    return target


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _safe_on_resume(key: str) -> bool:
    return any(key == s or key.startswith(s + ".") for s in SAFE_ON_RESUME)


def check_resume_config(saved: dict, config: ml_collections.ConfigDict, where: str,
                        saved_architecture: dict | None = None,
                        architecture: dict | None = None) -> None:
    """Refuse (errors.ConfigError) to resume `saved` (the checkpoint's config)
    with `config` if they differ outside `SAFE_ON_RESUME`, listing every such
    key with both values; also if the pretrained parts' shapes differ."""
    old = _flatten(saved)
    new = _flatten(json.loads(json.dumps(config.to_dict(), default=str)))
    changed = [f"{k}: {old[k]!r} -> {new[k]!r}" for k in sorted(old.keys() & new.keys())
               if old[k] != new[k] and not _safe_on_resume(k)]
    if saved_architecture and architecture and saved_architecture != architecture:
        changed.append(f"architecture of the pretrained parts: {saved_architecture} -> "
                       f"{architecture}")
    if changed:
        raise errors.ConfigError(
            f"{where} was written with another config; these keys change the saved state "
            f"or the run it continues: {'; '.join(changed)}. Use a new workdir (or the "
            f"old values). Keys safe to change on resume: {', '.join(SAFE_ON_RESUME)}")


def is_primary() -> bool:
    return jax.process_index() == 0
