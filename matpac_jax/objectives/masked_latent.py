"""Masked latent prediction (M2D) + classification (MATPAC): docs/SPEC.md sections 2-5, 11.

Losses, masking, EMA and schedules; the networks are in models/masked_latent.py.
One loss function serves the methods: M2D is `alpha=1, standardize_target=True`
with no heads; MATPAC is `alpha=0.5, standardize_target=False` with heads;
MATPAC++ is MATPAC whose predictor returns K hypotheses per masked token
(`mcl_prediction_loss`).
"""
from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from matpac_jax.models.layers import l2_normalize
from matpac_jax.models.masked_latent import Student, Teacher


def random_masking(rng: jax.Array, batch: int, num_tokens: int, ratio: float):
    """Per-sample shuffle by argsort of uniform noise.

    Returns (ids_shuffle, ids_restore, len_keep): the first `len_keep` of
    `ids_shuffle` are visible to the student, the rest go to the teacher.
    """
    len_keep = int(num_tokens * (1 - ratio))
    noise = jax.random.uniform(rng, (batch, num_tokens))
    ids_shuffle = jnp.argsort(noise, axis=1)
    ids_restore = jnp.argsort(ids_shuffle, axis=1)
    return ids_shuffle, ids_restore, len_keep


def _ema(target: nnx.Module, source: nnx.Module, momentum) -> None:
    t, s = nnx.state(target, nnx.Param), nnx.state(source, nnx.Param)
    nnx.update(target, jax.tree.map(lambda a, b: momentum * a + (1 - momentum) * b, t, s))


def ema_update(teacher: Teacher, student: Student, momentum_encoder, momentum_head=None) -> None:
    """teacher <- m * teacher + (1 - m) * student (blocks + final LN, and heads)."""
    _ema(teacher.stack, student.encoder.stack, momentum_encoder)
    if teacher.head is not None:
        _ema(teacher.head, student.head, momentum_head)


def teacher_temp_schedule(step, warmup_steps: int = 9827, start: float = 0.04,
                          end: float = 0.07):
    """Linear start -> end over the warm-up, then constant."""
    frac = jnp.clip(jnp.asarray(step, jnp.float32) / warmup_steps, 0.0, 1.0)
    return start + (end - start) * frac


def ema_momentum_schedule(step, anneal_steps: int, start: float, end: float):
    """Linear start -> end, reaching `end` at update `anneal_steps`, then `end`.

    MATPAC (fairseq `get_annealed_rate`) anneals over `total_steps` updates;
    M2D (`ema_decay_sched`) over `total_steps - 1`, so its last update uses `end`.
    """
    frac = jnp.clip(jnp.asarray(step, jnp.float32) / max(int(anneal_steps), 1), 0.0, 1.0)
    return start + (end - start) * frac


def _gather(x: jax.Array, ids: jax.Array) -> jax.Array:
    return jnp.take_along_axis(x, ids[..., None], axis=1)


def _standardize(target: jax.Array) -> jax.Array:
    """M2D: per token, unbiased variance (torch .var default)."""
    mean = target.mean(-1, keepdims=True)
    var = target.var(-1, keepdims=True, ddof=1)
    return (target - mean) / jnp.sqrt(var + 1e-6)


def prediction_loss(pred: jax.Array, target: jax.Array, standardize_target: bool) -> jax.Array:
    """Mean over all masked tokens of 2 - 2 cos(pred, target)."""
    pred, target = pred.astype(jnp.float32), target.astype(jnp.float32)
    if standardize_target:
        target = _standardize(target)
    cos = jnp.sum(l2_normalize(pred) * l2_normalize(target), axis=-1)
    return jnp.mean(2 - 2 * cos)


def mcl_temperature(step, start: float = 0.1, decay: float = 0.99997):
    """MATPAC++'s assignment temperature, official `get_exp_annealed_rate`:
    start * decay**step (0.1 -> 1e-4 at update ~230k of 294,816)."""
    # exp(step * log(decay)) with the log in float64: float32's 0.99997 is
    # 2e-8 off, which compounds to 0.4 % at update 230k.
    return start * jnp.exp(jnp.asarray(step, jnp.float32) * jnp.float32(math.log(decay)))


def mcl_prediction_loss(preds: jax.Array, target: jax.Array, temperature, temperature_end: float,
                        standardize_target: bool = False
                        ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Multiple Choice Learning over K hypotheses (official `forward_loss_pred`, use_mcl).

    preds (B, n, K, D), target (B, n, D). Per masked token and head,
    d_k = 2 - 2 cos(pred_k, target). While `temperature > temperature_end`
    (annealed MCL) a token's loss is sum_k q_k d_k with q = softmax(-d / T)
    over the heads, q without gradient: every head learns, the better ones
    more. After, winner-takes-all: min_k d_k, so only the winning head of a
    token gets its gradient. Returns (mean over tokens, winner (B, n) = argmin_k
    d_k, the weights q (B, n, K) actually used).
    """
    preds, target = preds.astype(jnp.float32), target.astype(jnp.float32)
    if standardize_target:
        target = _standardize(target)
    cos = jnp.sum(l2_normalize(preds) * l2_normalize(target)[:, :, None], axis=-1)
    d = 2 - 2 * cos  # (B, n, K)
    winner = jnp.argmin(d, axis=-1)
    temperature = jnp.asarray(temperature, jnp.float32)
    soft = jax.nn.softmax(-d / jnp.maximum(temperature, temperature_end), axis=-1)
    hard = jax.nn.one_hot(winner, d.shape[-1], dtype=d.dtype)
    q = jax.lax.stop_gradient(jnp.where(temperature > temperature_end, soft, hard))
    return jnp.mean(jnp.sum(q * d, axis=-1)), winner, q


def masked_latent_loss(student: Student, teacher: Teacher, center: jax.Array | None,
                       x: jax.Array, ids_shuffle: jax.Array, ids_restore: jax.Array,
                       len_keep: int, *, alpha: float = 1.0, standardize_target: bool = True,
                       student_temp: float = 0.1, teacher_temp=0.07,
                       center_momentum: float = 0.9, mcl_temp=None,
                       mcl_temp_end: float = 1e-4) -> tuple[jax.Array, dict[str, Any]]:
    """One M2D/MATPAC/MATPAC++ forward; returns (loss, aux).

    A predictor with K hypothesis heads (MATPAC++) needs `mcl_temp`, the
    assignment temperature at this step: the prediction loss is
    `mcl_prediction_loss`, and the classification head sees each token's
    winning hypothesis (gradient reaches that head only), as the official code.

    All means are plain means over the (global) batch, so under jit with a
    sharded batch they are the global means the official all-reduces give.
    `center` (1, 1, K) is the center from previous steps; aux['new_center']
    is the one to use next step. The teacher branch is under stop_gradient.
    """
    tokens = student.encoder.embed_patches(x)
    b = tokens.shape[0]
    cls = student.encoder.cls(b)
    visible = _gather(tokens, ids_shuffle[:, :len_keep])
    masked = jax.lax.stop_gradient(_gather(tokens, ids_shuffle[:, len_keep:]))

    latent = student.encoder.encode_tokens(jnp.concatenate([cls, visible], axis=1))
    pred = student.predictor(latent, ids_restore, ids_shuffle)
    target = teacher.stack(jnp.concatenate([jax.lax.stop_gradient(cls), masked], axis=1))[:, 1:]
    target = jax.lax.stop_gradient(target)

    aux = {}
    if pred.ndim == 4:  # MATPAC++: (B, n, K, D) hypotheses
        if mcl_temp is None:
            raise ValueError("a predictor with hypothesis heads needs mcl_temp")
        loss_pred, winner, q = mcl_prediction_loss(pred, target, mcl_temp, mcl_temp_end,
                                                   standardize_target)
        aux.update(hypotheses=pred, winner=winner, assignment=q)
        pred = jnp.take_along_axis(pred, winner[..., None, None], axis=2)[:, :, 0]
    else:
        loss_pred = prediction_loss(pred, target, standardize_target)
    aux.update(loss_pred=loss_pred, student_latent=latent, teacher_target=target,
               prediction=pred)
    if student.head is None or alpha == 1.0:
        aux.update(loss_cls=jnp.zeros((), jnp.float32), new_center=center)
        return loss_pred, aux

    s_logits = student.head(pred).astype(jnp.float32)
    t_logits = jax.lax.stop_gradient(teacher.head(target)).astype(jnp.float32)
    center = jax.lax.stop_gradient(center.astype(jnp.float32))
    t_probs = jax.nn.softmax((t_logits - center) / teacher_temp, axis=-1)
    new_center = (center * center_momentum
                  + t_probs.mean(axis=(0, 1), keepdims=True) * (1 - center_momentum))
    log_p = jax.nn.log_softmax(s_logits / student_temp, axis=-1)
    loss_cls = jnp.mean(-jnp.sum(t_probs * log_p, axis=-1))
    loss = alpha * loss_pred + (1 - alpha) * loss_cls
    aux.update(loss_cls=loss_cls, new_center=new_center, student_logits=s_logits,
               teacher_probs=t_probs)
    return loss, aux
