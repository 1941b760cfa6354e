"""Building the sharded training step, for real devices or compile-only ones.

`build` validates the config, makes the mesh, derives every shard of the
train state from the logical-axis rules and wraps the one `train_step` in
`jax.jit` with those shardings. With `materialize=False` it touches no
device: the state stays `jax.ShapeDtypeStruct`s, so the same step lowers and
compiles for a TPU slice or GPUs this machine does not have
(`matpac_jax.plan`). The loop that runs it is training/trainer.py.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import logging
from flax import nnx

from matpac_jax import errors
from matpac_jax.data import loader as data_loader
from matpac_jax.methods.base import Method, require
from matpac_jax.models import layers
from matpac_jax.models.layers import Buffer
from matpac_jax.training import optim, sharding


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
    """Everything `build` makes before the first step (trainer, bench, plan).
    `state` holds arrays, or ShapeDtypeStructs with their shardings when
    built with `materialize=False`."""

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
             method: Method | None = None) -> None:
    """Config errors that must surface before anything is built or compiled
    (errors.ConfigError naming the key and what it must be), for `devices`
    (default: all); `method`'s own keys through `Method.validate_config`.
    Only checks: `build` makes the mesh."""
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
    require(d.corrupt_records in data_loader.CORRUPT_RECORDS, "data.corrupt_records",
            d.corrupt_records, " or ".join(map(repr, data_loader.CORRUPT_RECORDS)))
    require(o.adam in optim.ADAM_FORMS, "opt.adam", o.adam, " or ".join(map(repr, optim.ADAM_FORMS)))
    require(o.lr >= 0, "opt.lr", o.lr, ">= 0")
    require(o.warmup_steps >= 0, "opt.warmup_steps", o.warmup_steps, ">= 0")
    for key in ("b1", "b2"):
        require(0 <= o[key] < 1, f"opt.{key}", o[key], "in [0, 1)")
    require(o.eps > 0, "opt.eps", o.eps, "> 0")
    require(o.weight_decay >= 0, "opt.weight_decay", o.weight_decay, ">= 0")
    require(o.clip_grad_norm >= 0, "opt.clip_grad_norm", o.clip_grad_norm, ">= 0 (0: off)")
    devices = list(jax.devices() if devices is None else devices)
    try:
        sizes = sharding.mesh_sizes(config.mesh, len(devices))
    except ValueError as e:
        raise errors.ConfigError(str(e)) from None
    dp = sharding.data_parallel_size(sizes)
    if config.batch_size % dp:
        raise errors.ConfigError(
            f"config.batch_size={config.batch_size} is not divisible by the data-parallel "
            f"size {dp} (mesh {sizes} on {len(devices)} devices)"
        )
    if config.batch_size % jax.process_count():
        raise errors.ConfigError(
            f"config.batch_size={config.batch_size} is not divisible by the "
            f"{jax.process_count()} processes"
        )
    accum = config.grad_accum_steps
    if accum < 1 or config.batch_size % (dp * accum):
        raise errors.ConfigError(
            f"config.batch_size={config.batch_size} must split into "
            f"config.grad_accum_steps={accum} microbatches, each divisible by the "
            f"data-parallel size {dp}"
        )
    m = config.model
    require(m.activation_dtype in layers.ACTIVATION_DTYPES, "model.activation_dtype",
            m.activation_dtype, " or ".join(map(repr, layers.ACTIVATION_DTYPES)))
    try:
        layers.check_remat(m.remat)
        layers.check_attention(m.attention, devices[0].platform, m.dtype)
        layers.cpu_workarounds_enabled(m.cpu_workarounds)
    except ValueError as e:
        raise errors.ConfigError(str(e)) from None
    if method is not None:
        if accum > 1 and not method.supports_grad_accum:
            raise errors.ConfigError(f"config.grad_accum_steps={accum}: not supported by "
                                     f"method {config.method!r} ({method.grad_accum_note})")
        method.validate_config(config)


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


def build(config: ml_collections.ConfigDict, method: Method, devices=None, *,
          materialize: bool = True) -> Run:
    """Mesh, sharded state, and the compiled-on-first-call train step.

    `devices`: the mesh's devices (default: all), real or compile-only
    (`jax.experimental.topologies`). `materialize=False` leaves the state
    abstract (shapes, dtypes, shardings): no initialisation runs and no
    pretrained part is copied in, so nothing touches a device. `validate`
    the config first (the training loop does, before taking the workdir)."""
    mesh = sharding.make_mesh(config.mesh, devices)
    accum = config.grad_accum_steps
    rules = sharding.logical_rules(config.fsdp, config.mesh.tensor != 1)
    tx, lr_schedule = optim.make_optimizer(config.opt, config.total_steps, method.lr_scale)
    workarounds = layers.cpu_workarounds_enabled(config.model.cpu_workarounds,
                                                 mesh.devices.flat[0].platform)

    def init():
        model = method.build(nnx.Rngs(config.seed))
        layers.set_remat(model, config.model.remat)
        layers.set_attention(model, config.model.attention)
        layers.set_activations(model, config.model.activation_dtype)
        layers.set_cpu_workarounds(model, workarounds)
        return TrainState(model, tx, method.trainable)

    # Built without a mesh in scope: variables are created unsharded inside
    # jit and laid out by `out_shardings` from our logical-axis rules.
    abstract = nnx.eval_shape(init)
    graphdef, abstract_state = nnx.split(abstract)
    state_sh = sharding.state_shardings(abstract_state, mesh, rules)
    if materialize:
        state = jax.jit(lambda: nnx.state(init()), out_shardings=state_sh)()
        ts = nnx.merge(graphdef, state)
        method.initialize(ts.model)  # pretrained parts (BEATs teacher / tokenizer)
        state = jax.device_put(nnx.state(ts), state_sh)
    else:
        state = abstract_arrays(abstract_state, state_sh)

    batch_shape = (config.batch_size, *method.input.shape)
    batch_shapes = {"x": batch_shape}
    if method.input.classes:
        batch_shapes["y"] = (config.batch_size, len(method.input.classes))
    batch_sh = {k: sharding.batch_sharding(mesh, len(v)) for k, v in batch_shapes.items()}
    skip_nonfinite = config.nonfinite == "skip"

    def train_step(state, batch, rng, accum=accum):
        # The mesh in scope while tracing: kernels XLA cannot partition
        # (attention='pallas') run per device on its share of the batch.
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), \
                layers.batch_axes(sharding.BATCH_AXES):
            return _train_step(state, batch, rng, accum)

    def _train_step(state, batch, rng, accum):
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

def abstract_arrays(tree, shardings):
    """ShapeDtypeStructs of `tree`'s arrays carrying `shardings` (restore targets,
    compile-only states)."""
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        tree, shardings)


def abstract_batch(run: Run) -> dict[str, jax.ShapeDtypeStruct]:
    """The global batch the step takes, as sharded ShapeDtypeStructs."""
    return {k: jax.ShapeDtypeStruct(shape, jnp.float32,
                                    sharding=sharding.batch_sharding(run.mesh, len(shape)))
            for k, shape in run.batch_shapes.items()}


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
