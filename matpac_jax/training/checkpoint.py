"""Orbax checkpoints: train state, data-iterator state, config and the
pretrained parts' architecture (`Method.architecture`), together.

Orbax writes each step to a temporary directory and renames it when every
process has finished, so a half-written checkpoint (SIGKILL mid-save) is
never listed and never restored. The RNG needs no saving: each step's key is
`fold_in(key(seed), step)`.
"""
from __future__ import annotations

import json
import os
from typing import Any

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath

CHECKPOINT_DIR = "checkpoints"


def checkpoint_dir(workdir: str) -> epath.Path:
    return epath.Path(workdir) / CHECKPOINT_DIR


class _IteratorSnapshot:
    """The data-iterator state as of `save()`; the async writer reads it later,
    when the live iterator has already moved on."""

    def __init__(self, iterator: Any):
        self._state = json.dumps(iterator.get_state(), indent=1).encode()

    def get_state(self) -> bytes:  # grain's handler writes non-DatasetIterator states as bytes
        return self._state


class Checkpointer:
    """Saves {state, data, config} every `every` steps, keeping the last `keep`."""

    def __init__(self, workdir: str, *, every: int, keep: int, asynchronous: bool = True):
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=every,
            max_to_keep=keep,
            enable_async_checkpointing=asynchronous,
            create=True,
        )
        self.manager = ocp.CheckpointManager(
            checkpoint_dir(workdir),
            item_names=("state", "data", "config", "architecture"),
            options=options,
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, data_iter: Any, config: ml_collections.ConfigDict,
             *, architecture: dict | None = None, force: bool = False) -> bool:
        args = {"state": ocp.args.StandardSave(state),
                "config": ocp.args.JsonSave(config.to_dict()),
                "architecture": ocp.args.JsonSave(architecture or {})}
        if data_iter is not None:
            args["data"] = grain.checkpoint.CheckpointSave(_IteratorSnapshot(data_iter))
        return self.manager.save(step, args=ocp.args.Composite(**args), force=force)

    def restore(self, step: int, abstract_state: Any, data_iter: Any) -> Any:
        args = {"state": ocp.args.StandardRestore(abstract_state)}
        if data_iter is not None:
            args["data"] = grain.checkpoint.CheckpointRestore(data_iter)
        restored = self.manager.restore(step, args=ocp.args.Composite(**args))
        return restored["state"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def latest_checkpoint(workdir: str) -> tuple[int, epath.Path] | None:
    """(step, path) of the newest finished checkpoint under a workdir, if any."""
    root = checkpoint_dir(workdir)
    if not root.exists():
        return None
    steps = [int(p.name) for p in root.iterdir() if p.name.isdigit() and (p / "state").exists()]
    if not steps:
        return None
    step = max(steps)
    return step, root / str(step)


def find_checkpoint(path: str, step: int | None = None) -> epath.Path:
    """One step's checkpoint folder: `path` itself, or step `step` (default:
    the latest) of the workdir `path`."""
    root = epath.Path(path)
    if (root / "state").exists():
        return root
    if step is not None:
        found = checkpoint_dir(path) / str(step)
        if not (found / "state").exists():
            raise ValueError(f"{path}: no checkpoint of step {step}")
        return found
    latest = latest_checkpoint(path)
    if latest is None:
        raise ValueError(f"no checkpoint found in {path}")
    return latest[1]


def _json_item(checkpoint_path: epath.Path, item: str) -> Any | None:
    folder = epath.Path(checkpoint_path) / item
    path = folder / "metadata"
    if not path.exists():
        candidates = list(folder.glob("*")) if folder.exists() else []
        if not candidates:
            return None
        path = candidates[0]
    return json.loads(path.read_text())


def load_config(checkpoint_path: epath.Path) -> ml_collections.ConfigDict:
    """The config a checkpoint was written with (saved beside the state)."""
    value = _json_item(checkpoint_path, "config")
    if value is None:
        raise FileNotFoundError(f"{checkpoint_path}: no saved config")
    return ml_collections.ConfigDict(value)


def load_architecture(checkpoint_path: epath.Path) -> dict | None:
    """`Method.architecture()` as saved (None: a checkpoint written before it was)."""
    return _json_item(checkpoint_path, "architecture")


def restore_model_state(checkpoint_path: epath.Path, abstract_model: Any) -> Any:
    """Just the `model` part of one checkpoint's train state (inference,
    evaluation, pretrained stages): no optimiser moments are read. Arrays land
    on the first local device."""
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = {"model": jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype),
                                    abstract_model)}
    restore_args = jax.tree.map(lambda _: ocp.ArrayRestoreArgs(sharding=device), target)
    with ocp.PyTreeCheckpointer() as ckptr:
        restored = ckptr.restore(
            os.fspath(epath.Path(checkpoint_path) / "state"),
            args=ocp.args.PyTreeRestore(item=target, restore_args=restore_args,
                                        partial_restore=True))
    return restored["model"]


def is_primary() -> bool:
    return jax.process_index() == 0
