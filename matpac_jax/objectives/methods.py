"""Methods: what the one training loop needs to know about each objective.

A method builds the whole model (trainable `student` plus frozen/EMA parts
and buffers), computes the loss of one batch, and does any EMA update. The
loop differentiates only `nnx.Param`s under `student` (`TRAINABLE`), so EMA
teachers, centers and codebooks never reach the optimiser.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from matpac_jax.data import frontends
from matpac_jax.objectives import masked_latent as ml

TRAINABLE = nnx.All(nnx.Param, nnx.PathContains("student"))


class Buffer(nnx.Variable):
    """Non-trainable state that lives in checkpoints (center, codebook stats)."""


def _dtype(name: str):
    return {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}[name]


class MaskedLatentModel(nnx.Module):
    """M2D / MATPAC: student (encoder, predictor, head), EMA teacher, center."""

    def __init__(self, student: ml.Student, teacher: ml.Teacher, center: jax.Array | None):
        self.student = student
        self.teacher = teacher
        self.center = Buffer(center) if center is not None else None


class MaskedLatentMethod:
    """M2D (alpha=1, standardised target) and MATPAC (alpha=0.5, K heads)."""

    trainable = TRAINABLE

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
        self.obj = config.objective
        self.frontend = config.data.frontend
        self.norm_stats = tuple(config.data.norm_stats) if config.data.get("norm_stats") else None
        self.input_shape = (config.model.in_freq, config.data.crop_frames)
        self.ema_timing = self.obj.ema_timing
        self.use_head = config.method == "matpac" and self.obj.alpha < 1.0
        self.kind = config.method

    def build(self, rngs: nnx.Rngs) -> MaskedLatentModel:
        m = self.config.model
        student = ml.Student.create(
            in_freq=m.in_freq, max_frames=self.config.data.crop_frames, patch=m.patch,
            dim=m.dim, depth=m.depth, num_heads=m.num_heads, mlp_ratio=m.mlp_ratio,
            pred_dim=m.pred_dim, pred_depth=m.pred_depth, pred_heads=m.pred_heads,
            head_out_dim=m.head_out_dim if self.use_head else None,
            head_hidden_dim=m.head_hidden_dim, head_bottleneck_dim=m.head_bottleneck_dim,
            dtype=_dtype(m.dtype), rngs=rngs,
        )
        teacher = ml.Teacher.create(student, rngs=rngs)
        center = jnp.zeros((1, 1, m.head_out_dim), jnp.float32) if self.use_head else None
        return MaskedLatentModel(student, teacher, center)

    def _momenta(self, step):
        o, total = self.obj, self.config.total_steps
        enc = ml.ema_momentum_schedule(step, total, o.ema_start, o.ema_end)
        head = ml.ema_momentum_schedule(step, total, o.head_ema_start, o.head_ema_end)
        return enc, head

    def _teacher_temp(self, step):
        o = self.obj
        return ml.teacher_temp_schedule(step, o.teacher_temp_warmup_steps,
                                        o.teacher_temp_start, o.teacher_temp_end)

    def ema_update(self, model: MaskedLatentModel, step) -> None:
        enc, head = self._momenta(step)
        if self.ema_timing == "before":  # MATPAC: on pre-update weights, not at update 0
            enc = jnp.where(step == 0, 1.0, enc)
            head = jnp.where(step == 0, 1.0, head)
        ml.ema_update(model.teacher, model.student, enc, head)

    def loss(self, model: MaskedLatentModel, x: jax.Array, rng: jax.Array, step):
        o = self.obj
        grid = model.student.encoder.grid_f * (x.shape[-1] // self.config.model.patch)
        ids_shuffle, ids_restore, len_keep = ml.random_masking(rng, x.shape[0], grid, o.mask_ratio)
        center = model.center[...] if model.center is not None else None
        loss, aux = ml.masked_latent_loss(
            model.student, model.teacher, center, x, ids_shuffle, ids_restore, len_keep,
            alpha=o.alpha if self.use_head else 1.0,
            standardize_target=o.standardize_target, student_temp=o.student_temp,
            teacher_temp=self._teacher_temp(step), center_momentum=o.center_momentum,
        )
        metrics = {"loss_pred": aux["loss_pred"]}
        if self.use_head:
            model.center[...] = aux["new_center"]
            c = aux["new_center"].reshape(-1)
            metrics["loss_cls"] = aux["loss_cls"]
            metrics["center_entropy"] = -jnp.sum(c * jnp.log(c + 1e-12))
            mean_p = aux["teacher_probs"].mean(axis=(0, 1))
            metrics["teacher_perplexity"] = jnp.exp(-jnp.sum(mean_p * jnp.log(mean_p + 1e-12)))
        return loss, metrics

    def schedules(self, step: int) -> dict[str, float]:
        enc, head = self._momenta(step)
        out = {"ema_momentum": float(enc)}
        if self.use_head:
            out["head_ema_momentum"] = float(head)
            out["teacher_temp"] = float(self._teacher_temp(step))
        return out

    def encoder(self, model: MaskedLatentModel):
        """The module `matpac_jax.load` embeds with."""
        return model.student.encoder

    def default_norm_stats(self) -> tuple[float, float]:
        return self.norm_stats or frontends.NORM[self.frontend]


_METHODS = {"matpac": MaskedLatentMethod, "m2d": MaskedLatentMethod}


def register(name: str, cls: Any) -> None:
    _METHODS[name] = cls


def get(config: ml_collections.ConfigDict):
    from matpac_jax.objectives import beats_methods  # noqa: F401 (registers the BEATs stages)

    if config.method not in _METHODS:
        raise ValueError(f"config.method={config.method!r}; known: {sorted(_METHODS)}")
    return _METHODS[config.method](config)
