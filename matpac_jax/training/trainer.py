"""The one training loop: MATPAC, M2D and the BEATs stages all run through it.

A method (`matpac_jax.methods.base.Method`) supplies the model, its loss and
its update hooks; this file owns everything else: config checks, the
workdir lock, mesh and sharding, the jitted step with donated state,
checkpoint/resume (state + data iterator), preemption, non-finite guards,
metrics and profiling. Read it top to bottom; fork it.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import signal
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import nnx

from matpac_jax import errors
from matpac_jax.data import loader as data_loader
from matpac_jax.methods.base import Method, require
from matpac_jax.models import layers
from matpac_jax.models.layers import Buffer
from matpac_jax.training import checkpoint as ckpt
from matpac_jax.training import metrics as metrics_lib
from matpac_jax.training import optim, sharding, workdir_lock


class NonFiniteError(errors.Error, RuntimeError):
    """The loss or gradient became NaN/Inf; the last good checkpoint is kept."""


class TrainState(nnx.Module):
    """Model (student, teacher, method buffers) plus optimiser state."""

    def __init__(self, model: nnx.Module, tx: optax.GradientTransformation, wrt):
        self.model = model
        self.optimizer = nnx.Optimizer(model, tx, wrt=wrt)
        # Step of the first non-finite update (-1: none yet); read on the host
        # only at log/checkpoint time so the loop never blocks on it.
        self.first_bad_step = nnx.Variable(jnp.array(-1, jnp.int32))


@dataclasses.dataclass
class Run:
    """Everything `train` builds before the first step (also used by bench)."""

    config: ml_collections.ConfigDict
    method: Method
    mesh: jax.sharding.Mesh
    graphdef: Any
    state: Any
    state_shardings: Any
    step_fn: Any
    lr_schedule: Any
    batch_shape: tuple   # of batch['x']
    batch_shapes: dict   # every key of the batch the step takes ('x', 'y' for labels)
    flops_step_fn: Any  # step_fn, or the step without accumulation (lowered for FLOPs)


def validate(config: ml_collections.ConfigDict, devices=None,
             method: Method | None = None) -> jax.sharding.Mesh:
    """Config errors that must surface before any compilation (errors.ConfigError
    naming the key and what it must be); `method`'s own keys through
    `Method.validate_config`. Returns the mesh."""
    c, o, d = config, config.opt, config.data
    require(c.total_steps > 0, "total_steps", c.total_steps, "> 0")
    require(c.batch_size > 0, "batch_size", c.batch_size, "> 0")
    for key in ("log_every", "checkpoint_every", "keep_checkpoints"):
        require(c[key] >= 1, key, c[key], ">= 1")
    require(c.nonfinite in ("stop", "skip"), "nonfinite", c.nonfinite, "'stop' or 'skip'")
    require(d.crop_frames >= 1, "data.crop_frames", d.crop_frames, ">= 1")
    require(d.workers >= 0, "data.workers", d.workers, ">= 0")
    require(d.short_clips in ("pad", "drop"), "data.short_clips", d.short_clips,
            "'pad' or 'drop'")
    corrupt = d.get("corrupt_records", "stop")
    require(corrupt in data_loader.CORRUPT_RECORDS, "data.corrupt_records", corrupt,
            " or ".join(map(repr, data_loader.CORRUPT_RECORDS)))
    require(o.adam in optim.ADAM_FORMS, "opt.adam", o.adam, " or ".join(map(repr, optim.ADAM_FORMS)))
    require(o.lr >= 0, "opt.lr", o.lr, ">= 0")
    require(o.warmup_steps >= 0, "opt.warmup_steps", o.warmup_steps, ">= 0")
    for key in ("b1", "b2"):
        require(0 <= o[key] < 1, f"opt.{key}", o[key], "in [0, 1)")
    require(o.eps > 0, "opt.eps", o.eps, "> 0")
    require(o.weight_decay >= 0, "opt.weight_decay", o.weight_decay, ">= 0")
    require(o.clip_grad_norm >= 0, "opt.clip_grad_norm", o.clip_grad_norm, ">= 0 (0: off)")
    try:
        mesh = sharding.make_mesh(config.mesh, devices)  # raises if it does not fit
    except ValueError as e:
        raise errors.ConfigError(str(e)) from None
    mesh_devices = mesh.size
    dp = sharding.data_parallel_size(mesh)
    if config.batch_size % dp:
        raise errors.ConfigError(
            f"config.batch_size={config.batch_size} is not divisible by the data-parallel "
            f"size {dp} (mesh {dict(mesh.shape)} on {mesh_devices} devices)"
        )
    if config.batch_size % jax.process_count():
        raise errors.ConfigError(
            f"config.batch_size={config.batch_size} is not divisible by the "
            f"{jax.process_count()} processes"
        )
    accum = config.get("grad_accum_steps", 1)
    if accum < 1 or config.batch_size % (dp * accum):
        raise errors.ConfigError(
            f"config.batch_size={config.batch_size} must split into "
            f"config.grad_accum_steps={accum} microbatches, each divisible by the "
            f"data-parallel size {dp}"
        )
    try:
        layers.check_remat(config.model.get("remat", "none"))
        layers.check_attention(config.model.get("attention", "xla"),
                               mesh.devices.flat[0].platform, config.model.get("dtype"))
        layers.cpu_workarounds_enabled(config.model.get("cpu_workarounds", "auto"))
    except ValueError as e:
        raise errors.ConfigError(str(e)) from None
    if method is not None:
        method.validate_config(config)
    return mesh


def loss_and_grads(method: Method, model: nnx.Module, batch: dict[str, jax.Array],
                   rng: jax.Array, step, accum_steps: int = 1):
    """((loss, metrics), gradients of the trainable parameters) for `batch`.

    With `accum_steps` > 1: strided microbatches (rows i, i+k, ...: each device
    keeps its share of each) run in turn under `lax.scan`, microbatch i masking
    with `fold_in(rng, i)`. Gradients, loss and metrics are microbatch means,
    the full-batch values for these fixed-token-count losses. `Buffer`s the
    loss writes (MATPAC's center, an EMA of a batch mean) start from the same
    value in every microbatch and end at the mean: the full-batch update.
    Metrics non-linear in the batch (perplexity, entropy) become means.
    """
    diff = nnx.DiffState(0, method.trainable)

    def grads_of(m, xb, key):
        return nnx.value_and_grad(lambda mm: method.loss(mm, xb, key, step),
                                  argnums=diff, has_aux=True)(m)

    if accum_steps == 1:
        return grads_of(model, batch, rng)
    graphdef, state = nnx.split(model)
    leaves, treedef = jax.tree.flatten(state)  # arrays: Variables stay at their trace level
    micro = jax.tree.map(lambda a: a.reshape(a.shape[0] // accum_steps, accum_steps,
                                             *a.shape[1:]).swapaxes(0, 1), batch)

    def one(xb, i):
        # A fresh model per microbatch, all starting from the same buffers.
        m = nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves))
        out = grads_of(m, xb, jax.random.fold_in(rng, i))
        return out, nnx.state(m, Buffer)

    def body(total, inputs):
        return jax.tree.map(jnp.add, total, one(*inputs)), None

    zeros = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype),
                         jax.eval_shape(one, jax.tree.map(lambda a: a[0], micro), jnp.int32(0)))
    total, _ = jax.lax.scan(body, zeros, (micro, jnp.arange(accum_steps)))
    out, buffers = jax.tree.map(lambda a: a / accum_steps, total)
    nnx.update(model, buffers)
    return out


def build(config: ml_collections.ConfigDict, method: Method, devices=None) -> Run:
    """Mesh, sharded state, and the compiled-on-first-call train step."""
    mesh = validate(config, devices, method)
    accum = config.get("grad_accum_steps", 1)
    if accum > 1 and not method.supports_grad_accum:
        raise errors.ConfigError(f"config.grad_accum_steps={accum}: not supported by "
                         f"method {config.method!r} ({method.grad_accum_note})")
    rules = sharding.logical_rules(config.fsdp, config.mesh.get("tensor", 1) != 1)
    tx, lr_schedule = optim.make_optimizer(config.opt, config.total_steps, method.lr_scale)
    workarounds = layers.cpu_workarounds_enabled(config.model.get("cpu_workarounds", "auto"),
                                                 mesh.devices.flat[0].platform)

    def init():
        model = method.build(nnx.Rngs(config.seed))
        layers.set_remat(model, config.model.get("remat", "none"))
        layers.set_attention(model, config.model.get("attention", "xla"))
        layers.set_cpu_workarounds(model, workarounds)
        return TrainState(model, tx, method.trainable)

    # Built without a mesh in scope: variables are created unsharded inside
    # jit and laid out by `out_shardings` from our logical-axis rules.
    abstract = nnx.eval_shape(init)
    graphdef, abstract_state = nnx.split(abstract)
    state_sh = sharding.state_shardings(abstract_state, mesh, rules)
    state = jax.jit(lambda: nnx.state(init()), out_shardings=state_sh)()
    ts = nnx.merge(graphdef, state)
    method.initialize(ts.model)  # pretrained parts (BEATs teacher / tokenizer)
    state = jax.device_put(nnx.state(ts), state_sh)

    batch_shape = (config.batch_size, *method.input.shape)
    batch_shapes = {"x": batch_shape}
    if method.input.classes:
        batch_shapes["y"] = (config.batch_size, len(method.input.classes))
    batch_sh = {k: sharding.batch_sharding(mesh, len(v)) for k, v in batch_shapes.items()}
    skip_nonfinite = config.nonfinite == "skip"

    def train_step(state, batch, rng, accum=accum):
        # merge() reuses the Variables of `state`, which the update mutates:
        # keep a snapshot of the old values for the skip-update path.
        old = jax.tree.map(lambda a: a, state) if skip_nonfinite else None
        ts = nnx.merge(graphdef, state)
        model, step = ts.model, ts.optimizer.step[...]
        (loss, aux), grads = loss_and_grads(method, model, batch, rng, step, accum)
        grad_norm = optax.tree.norm(grads)
        method.before_update(model, step)
        ts.optimizer.update(model, grads)
        method.after_update(model, step)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        bad = ts.first_bad_step[...]
        ts.first_bad_step[...] = jnp.where((bad < 0) & ~finite, step.astype(jnp.int32), bad)
        new_state = nnx.state(ts)
        if skip_nonfinite:  # keep the old weights and moments; the step still counts
            keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
            new_state["model"] = keep(new_state["model"], old["model"])
            new_state["optimizer"]["opt_state"] = keep(
                new_state["optimizer"]["opt_state"], old["optimizer"]["opt_state"])
        metrics = {"loss": loss, "grad_norm": grad_norm, **aux}
        return new_state, metrics

    jit = functools.partial(
        jax.jit,
        in_shardings=(state_sh, batch_sh, sharding.replicated(mesh)),
        out_shardings=(state_sh, sharding.replicated(mesh)),
        donate_argnums=(0,),
    )
    step_fn = jit(train_step)
    # XLA's cost analysis counts a loop body once, so an accumulating step's
    # FLOPs are read from the same step without the loop.
    flops_fn = jit(functools.partial(train_step, accum=1)) if accum > 1 else step_fn
    return Run(config, method, mesh, graphdef, state, state_sh, step_fn, lr_schedule,
               batch_shape, batch_shapes, flops_fn)


def data_path(config: ml_collections.ConfigDict, workdir: str) -> str:
    """`data.path`, or the demo corpus (rendered once, cached; shards in the workdir)."""
    if config.data.path != "demo":
        return config.data.path
    from matpac_jax.data import demo

    return demo.ensure_demo_shards(os.path.join(workdir, "demo_data"), config.data.frontend,
                                   num_clips=config.data.demo_clips)


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
            corrupt_records=config.data.get("corrupt_records", "stop"),
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
            from jax.experimental import multihost_utils

            try:
                return self.requested or multihost_utils.reached_preemption_sync_point(step)
            except RuntimeError:
                return self.requested
        return self.requested


def compile_step(run: Run, batch: dict[str, jax.Array]):
    """Compile the step once, ahead of time; also return its FLOPs for the whole
    mesh from XLA's cost analysis (None where the backend gives none)."""
    key = jax.random.key(0)
    compiled = run.step_fn.lower(run.state, batch, key).compile()
    try:
        if run.flops_step_fn is run.step_fn:  # per device, after partitioning
            cost, devices = compiled.cost_analysis(), run.mesh.size
        else:  # the whole program as lowered, before partitioning and fusion
            cost, devices = run.flops_step_fn.lower(run.state, batch, key).cost_analysis(), 1
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        flops = float(cost.get("flops", 0.0)) * devices or None
    except Exception as e:  # cost analysis is best-effort on some backends
        logging.warning("XLA cost analysis unavailable: %s", e)
        flops = None
    return compiled, flops


def train(config: ml_collections.ConfigDict, workdir: str, method: Method,
          devices=None, evaluate: Callable[[int, nnx.Module], dict[str, float]] | None = None
          ) -> dict[str, float]:
    """Train to `config.total_steps`, resuming from `workdir` if it has checkpoints.
    `devices`: the mesh's devices (default: all). `evaluate(step, model)`, if
    given, runs before every checkpoint save (fine-tuning scores the valid
    split there); what it returns is logged with the training metrics. The
    workdir is locked for the run (training/workdir_lock.py)."""
    validate(config, devices, method)
    with workdir_lock.WorkdirLock(workdir, primary=ckpt.is_primary()):
        return _train(config, workdir, method, devices, evaluate)


def _train(config, workdir, method, devices, evaluate):
    if "://" not in workdir:
        os.makedirs(workdir, exist_ok=True)
    path = data_path(config, workdir)
    data_loader.find_shards(path)  # a clear error before any compilation
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
            abstract = jax.tree.map(
                lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                run.state, run.state_shardings,
            )
            restored = checkpointer.restore_latest(abstract, data)
            if restored is not None:
                start, run.state = restored
                logging.info("Resuming from step %d in %s", start, workdir)

        writer = metrics_lib.EventWriter(_tensorboard_dir(workdir))
        bar = _progress_bar(start, config.total_steps)
        last = _loop(run, config, method, workdir, data, checkpointer, writer, start, bar,
                     evaluate)
        finished = True
    finally:  # a failure prints its own error and nothing of orbax's threads
        checkpointer.close(quiet=not finished)
        if writer is not None:
            writer.close()
        if bar is not None:
            bar.close()
    return last


def _loop(run, config, method, workdir, data, checkpointer, writer, start, bar, evaluate):
    preemption = _Preemption()
    peak = metrics_lib.peak_flops(jax.devices()[0], config.get("peak_flops"))
    flops = None
    profile_start = config.profile.start_step if config.profile.num_steps else -1
    tracing = False
    base_key = jax.random.key(config.seed)
    last = {}
    t_log, steps_since_log = time.perf_counter(), 0

    for step in range(start, config.total_steps):
        if step == profile_start:
            jax.profiler.start_trace(os.path.join(workdir, "profile"))
            tracing = True
        batch = _to_global(run, next(data))
        if step == start:
            step_fn, flops = compile_step(run, batch)
            t_log = time.perf_counter()  # step times exclude the compile
        run.state, m = step_fn(run.state, batch, jax.random.fold_in(base_key, step))
        steps_since_log += 1
        if tracing and step == profile_start + config.profile.num_steps - 1:
            jax.block_until_ready(m)
            jax.profiler.stop_trace()
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
            if evaluate is not None and not stop:
                scores = evaluate(done, nnx.merge(run.graphdef, run.state).model)
                writer.scalars(done, scores)
                last.update(scores)
            checkpointer.save(done, run.state, data, config,
                              architecture=method.architecture(), force=True)
        if stop:
            logging.warning("Saved checkpoint %d after preemption; exiting.", done)
            break
    if tracing:  # the run ended (or was preempted) inside the profiled window
        jax.profiler.stop_trace()
    return last


def _tensorboard_dir(workdir: str) -> str:
    """Event files are appended live, which object stores cannot do: a cloud
    workdir logs to ./tensorboard/<run name> on the host (sync it yourself)."""
    if "://" in workdir:
        return os.path.join(os.getcwd(), "tensorboard", os.path.basename(workdir.rstrip("/")))
    return os.path.join(workdir, "tensorboard")


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
    from tqdm import tqdm

    return tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)
