"""The one training loop: MATPAC, M2D and the BEATs stages all run through it.

A method (`matpac_jax.methods.base.Method`) supplies the model, its loss and
its update hooks; training/step.py builds the sharded, jitted step; this file
runs it: the workdir lock, data, checkpoint/resume (state + data iterator),
preemption, non-finite guards, metrics and profiling. Read it top to bottom;
fork it.
"""
from __future__ import annotations

import dataclasses
import os
import signal
import sys
import tempfile
import time
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import nnx
from jax.experimental import multihost_utils
from tqdm import tqdm

from matpac_jax import errors, storage
from matpac_jax.data import loader as data_loader
from matpac_jax.data import shards
from matpac_jax.methods.base import Method
from matpac_jax.training import checkpoint as ckpt
from matpac_jax.training import metrics as metrics_lib
from matpac_jax.training import sharding, workdir_lock
from matpac_jax.training.step import Run, abstract_arrays, build, compile_step, validate


class NonFiniteError(errors.Error, RuntimeError):
    """The loss or gradient became NaN/Inf; the last good checkpoint is kept."""


def make_data(config: ml_collections.ConfigDict, method: Method, path: str):
    """This process's part of the global batch, as a checkpointable grain iterator."""
    per_process = config.batch_size // jax.process_count()
    spec = method.input
    return iter(
        data_loader.make_loader(
            path,
            frontend=method.input.frontend,
            crop_frames=config.data.crop_frames,
            batch_size=per_process,
            seed=config.seed,
            shuffle=True,
            worker_count=config.data.workers,
            shard_index=jax.process_index(),
            shard_count=jax.process_count(),
            short_clips=config.data.short_clips,
            norm_stats=spec.norm_stats,
            classes=spec.classes or None,
            balanced=spec.balanced,
            corrupt_records=config.data.corrupt_records,
            holdout=config.data.holdout,
        )
    )


def _to_global(run: Run, local: np.ndarray | dict) -> dict[str, jax.Array]:
    """This process's rows (a loader batch, or just its 'x') -> the global batch."""
    local = local if isinstance(local, dict) else {"x": local}
    return {k: jax.make_array_from_process_local_data(
                sharding.batch_sharding(run.mesh, len(shape)), local[k], shape)
            for k, shape in run.batch_shapes.items()}


class _Preemption:
    """SIGTERM (a preempted TPU VM / SLURM job) asks for a save-and-exit."""

    def __init__(self):
        self.requested = False
        try:
            signal.signal(signal.SIGTERM, self._handler)
        except ValueError:  # not in the main thread (e.g. notebooks)
            pass

    def _handler(self, signum, frame):
        logging.warning("SIGTERM received: saving a checkpoint, then exiting.")
        self.requested = True

    def reached(self, step: int) -> bool:
        if jax.process_count() > 1:
            try:
                return self.requested or multihost_utils.reached_preemption_sync_point(step)
            except RuntimeError:
                return self.requested
        return self.requested


def train(config: ml_collections.ConfigDict, workdir: str, method: Method,
          devices=None, evaluate: Callable[[int, nnx.Module], dict[str, float]] | None = None
          ) -> dict[str, float]:
    """Train to `config.total_steps`, resuming from `workdir` if it has checkpoints.
    `devices`: the mesh's devices (default: all). `evaluate(step, model)`, if
    given, runs before every checkpoint save (fine-tuning scores the valid
    split there); what it returns is logged with the training metrics. The
    workdir (local or gs://) is locked for the run (training/workdir_lock.py).
    A SIGTERM saves a checkpoint and raises `errors.Preempted`."""
    workdir = storage.check(workdir, "--workdir")
    validate(config, devices, method)
    with workdir_lock.WorkdirLock(workdir, primary=ckpt.is_primary()):
        return _train(config, workdir, method, devices, evaluate)


def _train(config, workdir, method, devices, evaluate):
    storage.makedirs(workdir)
    path = config.data.path
    shards.find_shards(path)  # a clear error before any compilation
    checkpointer = ckpt.Checkpointer(
        workdir, every=config.checkpoint_every, keep=config.keep_checkpoints,
        asynchronous=config.async_checkpoints,
    )
    writer = bar = None
    finished = False
    try:
        saved = checkpointer.newest_config()
        if saved is not None:  # before anything is built or read
            step, saved_config, saved_architecture = saved
            ckpt.check_resume_config(saved_config, config, f"{workdir} (checkpoint step {step})",
                                     saved_architecture, method.architecture())
        run = build(config, method, devices)
        data = make_data(config, method, path)
        start = 0
        if checkpointer.latest_step():
            abstract = abstract_arrays(run.state, run.state_shardings)
            restored = checkpointer.restore_latest(abstract, data)
            if restored is not None:
                start, run.state = restored
                logging.info("Resuming from step %d in %s", start, workdir)

        writer = metrics_lib.EventWriter(storage.join(workdir, "tensorboard"))
        bar = _progress_bar(start, config.total_steps)
        last = _loop(Session(run, config, method, workdir, data, checkpointer, writer, bar,
                             evaluate), start)
        finished = True
    finally:  # a failure prints its own error and nothing of orbax's threads
        checkpointer.close(quiet=not finished)
        if writer is not None:
            writer.close()
        if bar is not None:
            bar.close()
    return last


@dataclasses.dataclass
class Session:
    """What one training run's loop works with, built by `_train`."""
    run: Run
    config: ml_collections.ConfigDict
    method: Method
    workdir: str
    data: Any                              # the checkpointable grain iterator
    checkpointer: ckpt.Checkpointer
    writer: metrics_lib.EventWriter
    bar: Any                               # tqdm on a terminal, else None
    evaluate: Callable[[int, nnx.Module], dict[str, float]] | None


def _loop(session: Session, start: int) -> dict[str, float]:
    run, config, method, data = session.run, session.config, session.method, session.data
    workdir, checkpointer, writer, bar = (session.workdir, session.checkpointer,
                                          session.writer, session.bar)
    preemption = _Preemption()
    peak = metrics_lib.peak_flops(jax.devices()[0], config.peak_flops)
    flops = None
    profile_start = config.profile.start_step if config.profile.num_steps else -1
    tracing = False
    base_key = jax.random.key(config.seed)
    last = {}
    t_log, steps_since_log = time.perf_counter(), 0
    stop, done = False, start

    for step in range(start, config.total_steps):
        if step == profile_start:
            trace_dir = _trace_dir(workdir)
            jax.profiler.start_trace(trace_dir)
            tracing = True
        batch = _to_global(run, next(data))
        if step == start:
            step_fn, flops = compile_step(run, batch)
            t_log = time.perf_counter()  # step times exclude the compile
        run.state, m = step_fn(run.state, batch, jax.random.fold_in(base_key, step))
        steps_since_log += 1
        if tracing and step == profile_start + config.profile.num_steps - 1:
            jax.block_until_ready(m)
            _stop_trace(trace_dir, workdir)
            tracing = False
        done = step + 1
        if done % config.log_every == 0 or done == config.total_steps:
            m = _to_host(m)
            _check_finite(run, config)
            dt = (time.perf_counter() - t_log) / steps_since_log
            t_log, steps_since_log = time.perf_counter(), 0
            last = {k: float(v) for k, v in m.items()}
            last.update(method.schedules(done - 1))
            last["lr"] = float(run.lr_schedule(done - 1))
            last["step_time_s"] = dt
            last["samples_per_s"] = config.batch_size / dt
            if flops and peak:
                last["mfu"] = flops / dt / (peak * jax.device_count())
            last.update(data_loader.data_metrics(data))
            writer.scalars(done, last)
            if bar is not None:  # above the bar, which stays at the bottom
                bar.write(metrics_lib.format_line(done, config.total_steps, last))
            elif ckpt.is_primary():
                print(metrics_lib.format_line(done, config.total_steps, last), flush=True)
        if bar is not None:
            bar.update(1)
            if last:
                bar.set_postfix(loss=f"{last.get('loss', float('nan')):.4f}", refresh=False)
        stop = preemption.reached(done)
        if done % config.checkpoint_every == 0 or done == config.total_steps or stop:
            _check_finite(run, config)
            if session.evaluate is not None and not stop:
                scores = session.evaluate(done, nnx.merge(run.graphdef, run.state).model)
                writer.scalars(done, scores)
                last.update(scores)
            checkpointer.save(done, run.state, data, config,
                              architecture=method.architecture(), force=True)
        if stop:
            break
    if tracing:  # the run ended (or was preempted) inside the profiled window
        _stop_trace(trace_dir, workdir)
    if stop and done < config.total_steps:
        checkpointer.wait()  # the checkpoint the message names is complete
        raise errors.Preempted(
            f"at step {done} of {config.total_steps} (SIGTERM); its checkpoint is saved in "
            f"{workdir}: re-run the same command to resume (exit status 75)")
    return last


def _trace_dir(workdir: str) -> str:
    """jax.profiler writes local files: a gs:// workdir's trace goes to a
    temporary folder first and is copied to WORKDIR/profile when it stops."""
    if storage.is_remote(workdir):
        return tempfile.mkdtemp(prefix="matpac_jax_profile_")
    return os.path.join(workdir, "profile")


def _stop_trace(trace_dir: str, workdir: str) -> None:
    jax.profiler.stop_trace()
    if storage.is_remote(workdir):
        for path in storage.find(trace_dir):
            rel = os.path.relpath(path, trace_dir).replace(os.sep, "/")
            storage.copy_file(path, storage.join(workdir, "profile", rel))


def _to_host(tree):
    """Replicated arrays -> numpy; works when they span several processes."""
    return jax.tree.map(lambda a: np.asarray(a.addressable_data(0)), tree)


def _check_finite(run: Run, config: ml_collections.ConfigDict) -> None:
    bad = int(_to_host(run.state["first_bad_step"][...]))
    if bad >= 0 and config.nonfinite != "skip":
        raise NonFiniteError(
            f"non-finite loss or gradient at step {bad}; stopping. The last good "
            "checkpoint is kept (set config.nonfinite='skip' to skip such updates)."
        )


def _progress_bar(start: int, total: int):
    if not sys.stdout.isatty() or jax.process_index() != 0:
        return None
    return tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)
