"""Supervised fine-tuning of any pretrained encoder as a method of the one loop.

The encoder comes from anything `matpac_jax.load` accepts (`config.finetune.
checkpoint`: our workdirs of every method, official M2D / MATPAC / BEATs
files), loaded by the finetune command (matpac_jax/finetune.py) and handed
in with its architecture; a linear head over its pooled features (models/classifier.py) is
added and everything trains end to end on labelled crops (`batch['y']`,
multi-hot over `config.finetune.classes`). Per step: random roll, frequency
and time masking, mixup, label smoothing, optional patch dropout, then CE
(single-label) or BCE (multi-label). Layer-wise lr decay is `lr_scale`:
`layer_decay ** (depth + 1 - layer)` with the patch embedding at layer 0 and
the final norm and head at `depth + 1` (the MAE / BEiT convention the M2D
fine-tuning follows). BEATs' own `layer_wise_gradient_decay_ratio` (a
gradient multiplier inside the encoder) is a model field, set by the recipe.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from matpac_jax import errors
from matpac_jax.data import frontends
from matpac_jax.methods.base import EmbeddingSpec, InputSpec, Method, on_this_machine, require
from matpac_jax.models.beats import BEATsEncoder
from matpac_jax.models.beats_layers import RELEASED, BEATsConfig
from matpac_jax.models.classifier import HEAD_NORMS, POOLINGS, Classifier
from matpac_jax.models.layers import dtype
from matpac_jax.models.vit import ViTEncoder
from matpac_jax.objectives import finetune as ft
from matpac_jax.objectives.masked_latent import random_masking

# BEATs cfg fields a fine-tuning recipe may set (config.model); the rest of the
# architecture comes from the pretrained checkpoint.
BEATS_RECIPE_FIELDS = ("layer_wise_gradient_decay_ratio", "dropout", "attention_dropout",
                       "activation_dropout", "dropout_input")


class FinetuneModel(nnx.Module):
    def __init__(self, student: Classifier):
        self.student = student


PATCH_DROPOUT_MODES = ("random", "structured")


class FinetuneMethod(Method):
    """Encoder + linear head, trained on labelled crops."""

    def __init__(self, config: ml_collections.ConfigDict, architecture: dict,
                 pretrained: nnx.Module | None = None):
        self.config, self.ft = config, config.finetune
        self.family = architecture["family"]
        self.arch = architecture
        self.pretrained = pretrained
        self.validate_config(config)
        frontend = architecture["frontend"]
        norm = tuple(architecture["norm_stats"])
        crop = config.data.crop_frames
        if self.family == "vit":
            shape = (architecture["encoder"]["in_freq"], crop)
        else:
            shape = (crop, frontends.NUM_BINS["beats"])
        self.input = InputSpec(frontend, shape, norm, tuple(self.ft.classes),
                               bool(self.ft.balanced))
        self.embedding = EmbeddingSpec(self.family, frontend, norm)
        self.time_axis = 2 if frontends.FEATURE_LAYOUT[frontend] == "freq_time" else 1
        if self.ft.layer_decay != 1.0 or self.ft.freeze_embed:
            self.lr_scale = self._layer_scale
        if self.ft.head_norm == "batchnorm":  # its batch statistics do not average
            self.supports_grad_accum = False
            self.grad_accum_note = "the BatchNorm head's statistics are per batch"

    # -- construction ------------------------------------------------------
    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict,
                    architecture: dict | None = None) -> "FinetuneMethod":
        """From a checkpoint's saved architecture; a new run gets its encoder
        from the finetune command, which reads `finetune.checkpoint`."""
        if not architecture:
            raise errors.ConfigError(
                "config.method='finetune' runs through `python -m matpac_jax.finetune "
                "--checkpoint=...`, which loads the pretrained encoder")
        return cls(config, architecture)

    @classmethod
    def for_planning(cls, config: ml_collections.ConfigDict,
                     load_encoder=None) -> "FinetuneMethod":
        """`finetune.checkpoint`'s encoder when it is on this machine, else the
        released one of the recipe's family (a BEATs recipe sets BEATs'
        layer-wise gradient decay; the others are ViT-B/16 M2D's); AudioSet's
        527 classes when the recipe leaves them to the task."""
        if config.finetune.classes == ("",):
            config.finetune.classes = tuple(f"class_{i}" for i in range(527))
        path = config.finetune.checkpoint
        if load_encoder is not None and on_this_machine(path):
            return cls(config, *load_encoder(path))
        if "layer_wise_gradient_decay_ratio" in config.model:
            arch = dict(family="beats", frontend="beats", encoder=dataclasses.asdict(
                BEATsConfig.from_dict(RELEASED)))
        else:
            arch = dict(family="vit", frontend="m2d", encoder=dict(
                in_freq=80, max_frames=max(608, config.data.crop_frames), patch=16, dim=768,
                depth=12, num_heads=12, mlp_ratio=4.0))
        return cls(config, {**arch, "norm_stats": list(frontends.NORM[arch["frontend"]])})

    def architecture(self) -> dict:
        return self.arch

    def validate_config(self, config: ml_collections.ConfigDict) -> None:
        f, crop, vit = config.finetune, config.data.crop_frames, self.family == "vit"
        require(len(f.classes) > 0 and all(f.classes), "finetune.classes", f.classes,
                "the task's class names (the finetune command sets them)")
        if vit:
            enc = self.arch["encoder"]
            require(crop % enc["patch"] == 0 and 0 < crop <= enc["max_frames"],
                    "data.crop_frames", crop, f"a multiple of {enc['patch']} up to the "
                    f"encoder's {enc['max_frames']} frames")
        else:
            require(crop % 16 == 0 and crop > 0, "data.crop_frames", crop, "a multiple of 16")
        pools = POOLINGS if vit else POOLINGS[:1]
        require(f.pooling in pools, "finetune.pooling", f.pooling, f"one of {pools}")
        require(f.head_norm in HEAD_NORMS, "finetune.head_norm", f.head_norm,
                f"one of {HEAD_NORMS}")
        modes = PATCH_DROPOUT_MODES if vit else PATCH_DROPOUT_MODES[:1]
        require(f.patch_dropout_mode in modes, "finetune.patch_dropout_mode",
                f.patch_dropout_mode, f"one of {modes} for a {self.family} encoder")
        require(0 <= f.patch_dropout < 1, "finetune.patch_dropout", f.patch_dropout, "in [0, 1)")
        require(0 < f.layer_decay <= 1, "finetune.layer_decay", f.layer_decay, "in (0, 1]")
        require(0 <= f.mixup_prob <= 1, "finetune.mixup_prob", f.mixup_prob, "in [0, 1]")
        require(f.mixup_alpha >= 0, "finetune.mixup_alpha", f.mixup_alpha, ">= 0")
        require(0 <= f.label_smoothing < 1, "finetune.label_smoothing", f.label_smoothing,
                "in [0, 1)")
        for key in ("freq_mask_width", "freq_masks", "time_mask_width", "time_masks"):
            require(f[key] >= 0, f"finetune.{key}", f[key], ">= 0")
        require(f.eval_batch > 0, "finetune.eval_batch", f.eval_batch, "> 0")

    def _encoder(self, rngs: nnx.Rngs) -> nnx.Module:
        d = dtype(self.config.model.dtype)
        if self.family == "vit":
            return ViTEncoder(**self.arch["encoder"], dtype=d, rngs=rngs)
        cfg = dict(self.arch["encoder"])
        cfg |= {k: self.config.model[k] for k in BEATS_RECIPE_FIELDS if k in self.config.model}
        return BEATsEncoder(BEATsConfig.from_dict(cfg), dtype=d, rngs=rngs)

    def build(self, rngs: nnx.Rngs) -> FinetuneModel:
        return FinetuneModel(Classifier(
            self._encoder(rngs), self.family, len(self.ft.classes), pooling=self.ft.pooling,
            head_norm=self.ft.head_norm, head_init_std=self.ft.head_init_std,
            dtype=dtype(self.config.model.dtype), rngs=rngs))

    def initialize(self, model: FinetuneModel) -> None:
        if self.pretrained is not None:
            params = nnx.state(self.pretrained, nnx.Param)
            nnx.update(model.student.encoder, params)

    # -- training ----------------------------------------------------------
    def depth(self) -> int:
        enc = self.arch["encoder"]
        return enc["depth"] if self.family == "vit" else enc["encoder_layers"]

    def _layer_scale(self, path: tuple[str, ...]) -> float:
        """lr multiplier of the parameter at `path`: layer-wise lr decay, and 0 for
        the patch embedding with `freeze_embed` (M2D's ESC-50 recipe)."""
        depth = self.depth()
        if self.ft.freeze_embed and path[1:3] in (("encoder", "patch_embed"),
                                                   ("encoder", "patch_embedding")):
            return 0.0
        blocks = ("stack", "blocks") if self.family == "vit" else ("encoder", "layers")
        layer = depth + 1  # head, final norms
        if "encoder" in path and path[1] == "encoder":
            rest = path[2:]
            if rest[:2] == blocks:
                layer = int(rest[2]) + 1
            elif self.family == "vit" and rest[:2] != ("stack", "norm"):
                layer = 0  # patch embedding, CLS token
            elif self.family == "beats" and (rest[0] != "encoder" or rest[1] in ("pos_conv",
                                                                                 "layer_norm")):
                layer = 0  # patch embedding, its norm and projection, conv positions
        return float(self.ft.layer_decay ** (depth + 1 - layer))

    def grid(self) -> tuple[int, int]:
        """(frequency, time) patches of a training crop."""
        f, t = self.input.shape if self.family == "vit" else self.input.shape[::-1]
        return f // 16, t // 16

    def augment(self, x: jax.Array, y: jax.Array, rng: jax.Array):
        """The training-time input pipeline on device: mixup, frequency/time masking
        (after mixup, as M2D's fine-tuning), roll, label smoothing."""
        a = self.ft
        k_roll, k_spec, k_mix = jax.random.split(rng, 3)
        x, y = ft.mixup(k_mix, x, y, a.mixup_alpha, a.mixup_prob)
        x = ft.spec_augment(k_spec, x, self.time_axis, freq_width=a.freq_mask_width,
                            freq_masks=a.freq_masks, time_width=a.time_mask_width,
                            time_masks=a.time_masks, shared=a.mask_shared)
        if a.roll:
            x = ft.random_roll(k_roll, x, self.time_axis)
        return x, ft.smooth(y, a.label_smoothing, a.multilabel)

    def loss(self, model: FinetuneModel, batch: dict, rng: jax.Array, step):
        k_aug, k_drop = jax.random.split(rng)
        x, y = self.augment(batch["x"], batch["y"], k_aug)
        keep = token_mask = None
        gf, gt = self.grid()
        if self.ft.patch_dropout > 0 and self.ft.patch_dropout_mode == "random":
            ids, _, n_keep = random_masking(k_drop, x.shape[0], gf * gt, self.ft.patch_dropout)
            keep = jnp.sort(ids[:, :n_keep], axis=1)
        elif self.ft.patch_dropout > 0:
            token_mask = ft.structured_keep(k_drop, x.shape[0], gf, gt, self.ft.patch_dropout)
        logits = model.student(x, keep_ids=keep, token_mask=token_mask)
        loss = ft.classification_loss(logits, y, self.ft.multilabel)
        metrics = {}
        if not self.ft.multilabel:
            metrics["train_accuracy"] = jnp.mean(
                jnp.argmax(logits, -1) == jnp.argmax(batch["y"], -1))
        return loss, metrics

    def encoder(self, model: FinetuneModel) -> nnx.Module:
        return model.student.encoder


METHODS = {"finetune": FinetuneMethod}
