"""M2D and MATPAC as methods of the one training loop (docs/SPEC.md sections 2-5).

Both are `MaskedLatentMethod`: `MatpacMethod` has the classification heads
(when `objective.alpha < 1`), `M2DMethod` none; the config sets the rest:
MATPAC has no target standardisation,
the EMA on the pre-update weights (`ema_timing='before'`) and an EMA anneal
over `total_steps`; M2D has no heads, standardised targets, the EMA after
the optimiser step and an anneal that ends at the last step.

MATPAC++ is MATPAC with `objective.prediction='mcl'`: the predictor ends in
`objective.mcl_heads` hypothesis heads trained by Multiple Choice Learning
(objectives.masked_latent.mcl_prediction_loss, docs/SPEC.md section 11).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from matpac_jax import errors
from matpac_jax.methods.base import EmbeddingSpec, InputSpec, Method, require
from matpac_jax.methods.pretrained import copy_into, report, same_shapes
from matpac_jax.models.layers import Buffer, dtype
from matpac_jax.models.masked_latent import Student, Teacher
from matpac_jax.objectives import masked_latent as ml

EMA_TIMINGS = ("before", "after")
PREDICTIONS = ("single", "mcl")  # objective.prediction: one predictor output, or MCL heads


class MaskedLatentModel(nnx.Module):
    """Student (encoder, predictor, head), EMA teacher, MATPAC's center."""

    def __init__(self, student: Student, teacher: Teacher, center: jax.Array | None):
        self.student = student
        self.teacher = teacher
        self.center = Buffer(center) if center is not None else None


class MaskedLatentMethod(Method):
    """M2D (alpha=1, standardised target) and MATPAC (alpha=0.5, K heads)."""

    classification_heads = False  # MATPAC's K-way DINO heads, teacher heads and center
    init_family = "vit"

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
        self.obj = config.objective
        if self.obj.ema_timing not in EMA_TIMINGS:
            raise errors.ConfigError(f"config.objective.ema_timing={self.obj.ema_timing!r}; "
                             f"known: {EMA_TIMINGS}")
        norm = tuple(config.data.norm_stats) or None
        frontend = config.data.frontend
        self.input = InputSpec(frontend, (config.model.in_freq, config.data.crop_frames), norm)
        self.embedding = EmbeddingSpec("vit", frontend, norm)
        self.use_head = self.classification_heads and self.obj.alpha < 1.0
        self.prediction = self.obj.get("prediction", "single")
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"config.objective.prediction={self.prediction!r}; "
                             f"known: {PREDICTIONS}")
        self.use_mcl = self.prediction == "mcl"

    def validate_config(self, config: ml_collections.ConfigDict) -> None:
        m, o, crop = config.model, config.objective, config.data.crop_frames
        require(m.patch >= 1, "model.patch", m.patch, ">= 1")
        require(m.in_freq % m.patch == 0, "model.in_freq", m.in_freq,
                f"a multiple of model.patch={m.patch}")
        require(crop >= m.patch and crop % m.patch == 0, "data.crop_frames", crop,
                f"a whole number (>= 1) of model.patch={m.patch} frames")
        require(m.dim % m.num_heads == 0, "model.dim", m.dim,
                f"divisible by model.num_heads={m.num_heads}")
        require(m.pred_dim % m.pred_heads == 0, "model.pred_dim", m.pred_dim,
                f"divisible by model.pred_heads={m.pred_heads}")
        patches = (m.in_freq // m.patch) * (crop // m.patch)
        keep = int(patches * (1 - o.mask_ratio))
        require(0 < o.mask_ratio < 1 and 1 <= keep < patches, "objective.mask_ratio",
                o.mask_ratio, f"in (0, 1), leaving at least one of the {patches} patches "
                "visible and one masked")
        require(0 <= o.alpha <= 1, "objective.alpha", o.alpha, "in [0, 1]")
        for key in ("ema_start", "ema_end", "head_ema_start", "head_ema_end",
                    "center_momentum"):
            require(0 <= o[key] <= 1, f"objective.{key}", o[key], "in [0, 1]")
        for key in ("student_temp", "teacher_temp_start", "teacher_temp_end"):
            require(o[key] > 0, f"objective.{key}", o[key], "> 0")
        require(o.teacher_temp_warmup_steps >= 0, "objective.teacher_temp_warmup_steps",
                o.teacher_temp_warmup_steps, ">= 0")

    def build(self, rngs: nnx.Rngs) -> MaskedLatentModel:
        m = self.config.model
        student = Student.create(
            in_freq=m.in_freq, max_frames=self.config.data.crop_frames, patch=m.patch,
            dim=m.dim, depth=m.depth, num_heads=m.num_heads, mlp_ratio=m.mlp_ratio,
            pred_dim=m.pred_dim, pred_depth=m.pred_depth, pred_heads=m.pred_heads,
            head_out_dim=m.head_out_dim if self.use_head else None,
            head_hidden_dim=m.head_hidden_dim, head_bottleneck_dim=m.head_bottleneck_dim,
            hypotheses=self.obj.mcl_heads if self.use_mcl else 1,
            dtype=dtype(m.dtype), rngs=rngs,
        )
        teacher = Teacher.create(student, rngs=rngs)
        center = jnp.zeros((1, 1, m.head_out_dim), jnp.float32) if self.use_head else None
        return MaskedLatentModel(student, teacher, center)

    def initialize(self, model: MaskedLatentModel) -> None:
        """`config.init_from`'s weights (methods/init_from.py); parts the file
        lacks keep the official init."""
        p = self.pretrained
        if p is None:
            return
        s, t, parts = model.student, model.teacher, p.parts
        official = "not in the file: initialised as the official code does"
        copy_into(s.encoder, parts["encoder"])
        done = {"student encoder": "from the file"}
        src = parts.get("predictor")
        if src is None:
            done["predictor"] = official
        else:
            copy_into(s.predictor.embed, src.embed)
            copy_into(s.predictor.stack, src.stack)
            s.predictor.mask_token.set_value(src.mask_token[...])
            if same_shapes(s.predictor.pred, src.pred):
                copy_into(s.predictor.pred, src.pred)
                done["predictor"] = "from the file"
            else:
                done["predictor"] = ("from the file, except its output layer (the file's does "
                                     "not fit these hypothesis heads): official init")
        teacher_mode = self.config.init_teacher
        if teacher_mode == "student":
            copy_into(t.stack, parts["encoder"].stack)
            done["teacher"] = "a copy of the file's student encoder (init_teacher='student')"
        elif "teacher" in parts:
            copy_into(t.stack, parts["teacher"])
            done["teacher"] = "from the file"
        else:
            done["teacher"] = official + " (independently of the student)"
        if self.use_head:
            if "head" in parts:
                copy_into(s.head, parts["head"])
                copy_into(t.head, parts["head" if teacher_mode == "student"
                                                   else "teacher_head"])
                model.center.set_value(np.asarray(parts["center"]))  # resharded by build
                done["heads and center"] = "from the file"
            else:
                if teacher_mode == "student":
                    copy_into(t.head, s.head)
                done["heads and center"] = official
        report(p.source, done)

    def _momenta(self, step):
        o, total = self.obj, self.config.total_steps
        anneal = total - 1 if o.ema_end_at_last_step else total
        enc = ml.ema_momentum_schedule(step, anneal, o.ema_start, o.ema_end)
        head = ml.ema_momentum_schedule(step, anneal, o.head_ema_start, o.head_ema_end)
        return enc, head

    def _teacher_temp(self, step):
        o = self.obj
        return ml.teacher_temp_schedule(step, o.teacher_temp_warmup_steps,
                                        o.teacher_temp_start, o.teacher_temp_end)

    def _mcl_temp(self, step):
        return ml.mcl_temperature(step, self.obj.mcl_temp_start, self.obj.mcl_temp_decay)

    def _ema(self, model: MaskedLatentModel, step, skip_first: bool) -> None:
        enc, head = self._momenta(step)
        if skip_first:
            enc, head = jnp.where(step == 0, 1.0, enc), jnp.where(step == 0, 1.0, head)
        ml.ema_update(model.teacher, model.student, enc, head)

    def before_update(self, model: MaskedLatentModel, step) -> None:
        # MATPAC: inside the forward, after the teacher branch, on the weights
        # the gradients were taken at; not at update 0 (fairseq `do_ema_step`).
        if self.obj.ema_timing == "before":
            self._ema(model, step, skip_first=True)

    def after_update(self, model: MaskedLatentModel, step) -> None:
        # M2D: `update_target_network` after the optimiser step, every update.
        if self.obj.ema_timing == "after":
            self._ema(model, step, skip_first=False)

    def loss(self, model: MaskedLatentModel, batch: dict, rng: jax.Array, step):
        x = batch["x"]
        o = self.obj
        grid = model.student.encoder.grid_f * (x.shape[-1] // self.config.model.patch)
        ids_shuffle, ids_restore, len_keep = ml.random_masking(rng, x.shape[0], grid, o.mask_ratio)
        center = model.center[...] if model.center is not None else None
        loss, aux = ml.masked_latent_loss(
            model.student, model.teacher, center, x, ids_shuffle, ids_restore, len_keep,
            alpha=o.alpha if self.use_head else 1.0,
            standardize_target=o.standardize_target, student_temp=o.student_temp,
            teacher_temp=self._teacher_temp(step), center_momentum=o.center_momentum,
            mcl_temp=self._mcl_temp(step) if self.use_mcl else None,
            mcl_temp_end=o.mcl_temp_end if self.use_mcl else 0.0,
        )
        metrics = {"loss_pred": aux["loss_pred"]}
        if self.use_mcl:  # how many heads are in use: exp(entropy of the win shares)
            share = jax.nn.one_hot(aux["winner"], o.mcl_heads).mean(axis=(0, 1))
            metrics["mcl_head_perplexity"] = jnp.exp(-jnp.sum(share * jnp.log(share + 1e-12)))
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
        if self.use_mcl:
            out["mcl_temp"] = float(self._mcl_temp(step))
        return out

    def encoder(self, model: MaskedLatentModel):
        return model.student.encoder

    def parts_for_init(self, model: MaskedLatentModel) -> tuple[str, dict]:
        s, t = model.student, model.teacher
        parts = {"encoder": s.encoder, "predictor": s.predictor, "teacher": t.stack}
        if s.head is not None:
            parts |= {"head": s.head, "teacher_head": t.head, "center": model.center[...]}
        return self.init_family, parts


class M2DMethod(MaskedLatentMethod):
    export_format = "m2d"


class MatpacMethod(MaskedLatentMethod):
    classification_heads = True
    export_format = "matpac"


METHODS = {"m2d": M2DMethod, "matpac": MatpacMethod}
