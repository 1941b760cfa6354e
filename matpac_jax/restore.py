"""Reading checkpoints: which steps of a workdir are complete, their saved
config and architecture, and a model's arrays, for every reader (resume,
inference, evaluation, fine-tuning, export, init_from).

Below the methods and the training loop: it knows orbax's layout and this
project's workdir layout (`WORKDIR/checkpoints/STEP/{state,config,
architecture,data}`), not what model a config describes (methods.load_workdir
builds that). A step counts once orbax finished it: locally a folder with
its final name, on gs:// (no rename there) one with `commit_success.txt`.
"""
from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from flax import nnx

from matpac_jax import errors, storage

CHECKPOINT_DIR = "checkpoints"


def checkpoint_dir(workdir: str) -> epath.Path:
    return storage.path(workdir) / CHECKPOINT_DIR


def reason(err: BaseException, limit: int = 400) -> str:
    """One line: the root cause of an exception (orbax wraps tensorstore's
    precise error in a generic one)."""
    chain, seen = [], set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        chain.append(err)
        err = err.__cause__ or err.__context__
    for e in reversed(chain):
        text = " ".join(str(e).split())
        if text:
            line = f"{type(e).__name__}: {text}"
            return line if len(line) <= limit else line[:limit] + "..."
    return type(chain[0]).__name__ if chain else "unknown error"


def latest_checkpoint(workdir: str) -> tuple[int, epath.Path] | None:
    """(step, path) of the newest finished checkpoint under a workdir, if any."""
    steps = finished_steps(workdir)
    return (steps[0], checkpoint_dir(workdir) / str(steps[0])) if steps else None


def finished_steps(workdir: str) -> list[int]:
    """Steps of the finished checkpoints under a workdir, newest first (a
    temporary or moved-aside folder is not one)."""
    root = checkpoint_dir(workdir)
    if not root.exists():
        return []
    return sorted((int(p.name) for p in root.iterdir() if p.name.isdigit() and _finished(p)),
                  reverse=True)


def _finished(step_dir: epath.Path) -> bool:
    """A step folder orbax completed: it has the state and, on gs:// (no
    rename there: orbax writes in place, then `commit_success.txt`), the marker."""
    return (step_dir / "state").exists() and (
        not storage.is_remote(step_dir) or (step_dir / "commit_success.txt").exists())


def find_checkpoint(path: str, step: int | None = None) -> epath.Path:
    """One step's checkpoint folder: `path` itself, or step `step` (default:
    the latest) of the workdir `path`."""
    return candidates(path, step)[0]


def candidates(path: str, step: int | None = None) -> list[epath.Path]:
    """Checkpoint folders to try, best first: `path` itself if it is one step's
    folder, step `step` of the workdir `path`, or all its finished steps,
    newest first (raises errors.CheckpointError if there are none)."""
    root = storage.path(path)
    if _finished(root):
        return [root]
    if step is not None:
        found = checkpoint_dir(path) / str(step)
        if not _finished(found):
            raise errors.CheckpointError(f"{path}: no checkpoint of step {step}")
        return [found]
    steps = finished_steps(path)
    if not steps:
        raise errors.CheckpointError(f"no checkpoint found in {path}")
    return [checkpoint_dir(path) / str(s) for s in steps]


def first_intact(path: str, load, step: int | None = None):
    """`load(checkpoint_folder)` of the newest checkpoint of `path` it succeeds
    on (readers: embed, evaluate, fine-tuning). A damaged newer step is
    skipped with one warning and left where it is (a reader does not rename
    in a workdir a run may hold); `errors.ConfigError` passes through. None
    loads: errors.CheckpointError naming each step and why."""
    failed = []
    for folder in candidates(path, step):
        try:
            return load(folder)
        except errors.ConfigError:
            raise
        except Exception as e:
            failed.append(f"{folder}: {reason(e)}")
            logging.warning("checkpoint %s is damaged (%s); trying an older one", folder,
                            reason(e))
    raise errors.CheckpointError(f"{path}: no intact checkpoint ({'; '.join(failed)})")


def restore_model(checkpoint_path: epath.Path, method) -> Any:
    """`method.build`'s model holding one checkpoint's arrays: built
    abstractly (no weights initialised), then only the model part of the
    state is read (no optimiser moments), onto the first local device."""
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: method.build(nnx.Rngs(0))))
    return nnx.merge(graphdef, restore_model_state(checkpoint_path, abstract))


def _json_item(checkpoint_path: epath.Path, item: str) -> Any | None:
    folder = epath.Path(checkpoint_path) / item
    path = folder / "metadata"
    if not path.exists():
        candidates = ([p for p in folder.glob("*") if p.name != "commit_success.txt"]
                      if folder.exists() else [])
        if not candidates:
            return None
        path = candidates[0]
    return json.loads(path.read_text())


def load_config(checkpoint_path: epath.Path) -> ml_collections.ConfigDict:
    """The config a checkpoint was written with (saved beside the state)."""
    value = _json_item(checkpoint_path, "config")
    if value is None:
        raise errors.CheckpointError(f"{checkpoint_path}: no saved config")
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
