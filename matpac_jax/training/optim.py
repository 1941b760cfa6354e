"""Optimiser and schedules from config (all schedules count optimiser updates)."""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax


def warmup_cosine(peak: float, warmup_steps: int, total_steps: int, end: float = 0.0):
    """Linear warm-up from 0 to `peak`, then half-cosine to `end` at `total_steps`."""
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=peak,
        warmup_steps=max(int(warmup_steps), 0),
        decay_steps=max(int(total_steps), int(warmup_steps) + 1),
        end_value=end,
    )


def _decay_mask(params):
    """Weight decay only on matrices: biases, norms, gains and tokens are excluded."""
    return jax.tree.map(lambda p: getattr(p, "ndim", 0) > 1, params)


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
    """Every gradient times `min(1, max_norm / (norm + 1e-6))`: the global-norm
    clipping of the official loops (fairseq's `clip_grad_norm_` for MATPAC,
    `clip_norm: 3.0`; `torch.nn.utils.clip_grad_norm_` for M2D).

    One multiply by a scalar, which XLA fuses into the Adam update; optax's
    select-and-divide form is materialised as an extra pass over every
    gradient on XLA:CPU (docs/BENCHMARKS.md).
    """

    def update(updates, state, params=None):
        del params
        scale = jnp.minimum(1.0, max_norm / (optax.tree.norm(updates) + 1e-6))
        return jax.tree.map(lambda g: g * scale.astype(g.dtype), updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def scale_by_fairseq_adam(b1: float, b2: float, eps: float) -> optax.GradientTransformation:
    """Adam moments as fairseq's `Adam` (and torch's pre-2.0 `Adam`) applies them:
    `mu / (sqrt(nu) + eps) * sqrt(1 - b2^t) / (1 - b1^t)`. Same as optax's
    `mu_hat / (sqrt(nu_hat) + eps)` except that eps is added before the bias
    correction, i.e. an effective eps of `eps / sqrt(1 - b2^t)` (4.5x eps at
    the first update with b2 = 0.95)."""

    def init(params):
        zeros = lambda p: jnp.zeros_like(p)
        return optax.ScaleByAdamState(count=jnp.zeros([], jnp.int32),
                                      mu=jax.tree.map(zeros, params),
                                      nu=jax.tree.map(zeros, params))

    def update(updates, state, params=None):
        del params
        mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, updates)
        nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, state.nu, updates)
        count = state.count + 1
        t = count.astype(jnp.float32)
        step = jnp.sqrt(1 - b2 ** t) / (1 - b1 ** t)
        out = jax.tree.map(lambda m, v: step * m / (jnp.sqrt(v) + eps), mu, nu)
        return out, optax.ScaleByAdamState(count=count, mu=mu, nu=nu)

    return optax.GradientTransformation(init, update)


def path_names(path) -> tuple[str, ...]:
    """A jax key path as plain strings: ('student', 'encoder', 'stack', 'blocks', '3', ...)."""
    out = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                out.append(str(getattr(k, attr)))
                break
        else:
            out.append(str(k))
    return tuple(out)


def scale_by_path(scale: Callable[[tuple[str, ...]], float]) -> optax.GradientTransformation:
    """Each update times `scale(path of its parameter)`: per-parameter lr (layer-wise
    lr decay). After the lr and weight decay, as torch's per-group `lr_scale`
    scales both."""

    def update(updates, state, params=None):
        del params
        return jax.tree_util.tree_map_with_path(
            lambda path, u: u * jnp.asarray(scale(path_names(path)), u.dtype), updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


ADAM_FORMS = ("adamw", "fairseq")
OPTIMIZERS = ("adam", "sgd")


def make_optimizer(opt: ml_collections.ConfigDict, total_steps: int,
                   lr_scale: Callable[[tuple[str, ...]], float] | None = None):
    """Decoupled-weight-decay Adam with warm-up cosine lr, global-norm clipping,
    decay mask. `opt.adam` picks where eps goes: 'adamw' (torch.optim.AdamW,
    optax: M2D) or 'fairseq' (fairseq's Adam: MATPAC), see `scale_by_fairseq_adam`.
    `opt.optimizer='sgd'` (momentum `opt.momentum`): M2D's fine-tuning (SGD, and
    timm's LARS, which with weight decay 0 applies no trust ratio: the same).
    `lr_scale`: per-parameter lr multiplier (`Method.lr_scale`)."""
    lr = warmup_cosine(opt.lr, opt.warmup_steps, total_steps, opt.get("end_lr", 0.0))
    mask = _decay_mask if opt.decay_exclude_1d else None
    name = opt.get("optimizer", "adam")
    if name not in OPTIMIZERS:
        raise ValueError(f"config.opt.optimizer={name!r}; known: {OPTIMIZERS}")
    form = opt.get("adam", "adamw")
    if form not in ADAM_FORMS:
        raise ValueError(f"config.opt.adam={form!r}; known: {ADAM_FORMS}")
    if name == "sgd":  # torch SGD: L2 into the gradient, then heavy-ball momentum
        tx = optax.chain(optax.add_decayed_weights(opt.weight_decay, mask),
                         optax.trace(decay=opt.momentum), optax.scale_by_learning_rate(lr))
    else:
        scale = (optax.scale_by_adam(opt.b1, opt.b2, opt.eps) if form == "adamw"
                 else scale_by_fairseq_adam(opt.b1, opt.b2, opt.eps))
        tx = optax.chain(scale, optax.add_decayed_weights(opt.weight_decay, mask),
                         optax.scale_by_learning_rate(lr))
    if lr_scale is not None:
        tx = optax.chain(tx, scale_by_path(lr_scale))
    if opt.clip_grad_norm:
        tx = optax.chain(clip_by_global_norm(opt.clip_grad_norm), tx)
    return tx, lr
