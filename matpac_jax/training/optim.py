"""Optimiser and schedules from config (all schedules count optimiser updates)."""
from __future__ import annotations

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


def linear(start: float, end: float, steps: int):
    """Linear ramp over `steps` updates, then constant (EMA momenta, temperatures)."""

    def schedule(step):
        frac = jnp.clip(jnp.asarray(step, jnp.float32) / max(int(steps), 1), 0.0, 1.0)
        return start + (end - start) * frac

    return schedule


def _decay_mask(params):
    """Weight decay only on matrices: biases, norms, gains and tokens are excluded."""
    return jax.tree.map(lambda p: getattr(p, "ndim", 0) > 1, params)


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
    """Every gradient times `min(1, max_norm / (norm + 1e-6))`: the global-norm
    clipping of the official loops (fairseq's `clip_grad_norm_` for MATPAC,
    `clip_norm: 3.0`; `torch.nn.utils.clip_grad_norm_` for M2D).

    One multiply by a scalar, which XLA fuses into the Adam update; optax's
    select-and-divide form is materialised as an extra pass over every
    gradient on XLA:CPU (~40 ms of a ViT-B step, docs/BENCHMARKS.md).
    """

    def update(updates, state, params=None):
        del params
        scale = jnp.minimum(1.0, max_norm / (optax.tree.norm(updates) + 1e-6))
        return jax.tree.map(lambda g: g * scale.astype(g.dtype), updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(opt: ml_collections.ConfigDict, total_steps: int):
    """AdamW (decoupled) with warm-up cosine lr, global-norm clipping, decay mask."""
    lr = warmup_cosine(opt.lr, opt.warmup_steps, total_steps)
    mask = _decay_mask if opt.decay_exclude_1d else None
    tx = optax.adamw(
        learning_rate=lr,
        b1=opt.b1,
        b2=opt.b2,
        eps=opt.eps,
        weight_decay=opt.weight_decay,
        mask=mask,
    )
    if opt.clip_grad_norm:
        tx = optax.chain(clip_by_global_norm(opt.clip_grad_norm), tx)
    return tx, lr
