"""BEATs self-distilled tokenizer objective (SPEC 8, iteration >= 2).

Never released officially; written from the paper and the released quantizer:
the tokenizer (a BEATs backbone + quantize layer, `BEATsTokenizer`) maps
patches to unit vectors, quantised against an EMA codebook
(`VectorQuantizer`: spherical k-means init on the first batch, EMA decay
0.99 of the normalised assigned means, commitment loss beta=1 with the
straight-through estimator). A 3-layer Transformer `Estimator` reconstructs
the teacher's (previous SSL model's) last-layer features from the quantised
vectors; loss = mean(1 - cos) + commitment.

The codebook lives in `CodebookState` variables, never `nnx.Param`: the
optimiser (`wrt=nnx.Param`) leaves it alone and the k-means / EMA updates
mutate it inside the (nnx-transformed) loss. Statistics are one-hot sums
over the batch axis, so under `jax.jit` with a data-sharded global batch
(one or many hosts) XLA all-reduces them: every device sees the same codebook.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from matpac_jax.models.beats import (  # re-exported: the quantizer is part of this objective
    BEATsConfig, BEATsTokenizer, CodebookState, TransformerEncoder, VectorQuantizer,
    codebook_usage, l2_normalize, linear, spherical_kmeans)

__all__ = [
    "CodebookState", "Estimator", "VectorQuantizer", "codebook_metrics", "codebook_usage",
    "kmeans_init", "spherical_kmeans", "tokenizer_loss",
]


class Estimator(nnx.Module):
    """Quantised vectors (B, N, quant_dim) -> teacher features (B, N, teacher_dim).

    Linear up to the encoder width, `num_layers` BEATs layers (conv
    positional embedding + gated relative bias, DeepNorm), Linear out.
    """

    def __init__(self, cfg: BEATsConfig, teacher_dim: int | None = None, *,
                 num_layers: int = 3, dtype=jnp.float32, rngs: nnx.Rngs):
        d = cfg.encoder_embed_dim
        self.cfg = dataclasses.replace(
            cfg, encoder_layers=num_layers, layer_wise_gradient_decay_ratio=1.0,
            finetuned_model=False)
        self.proj_in = linear(cfg.quant_dim, d, (None, "embed"), dtype=dtype, rngs=rngs)
        self.encoder = TransformerEncoder(self.cfg, dtype=dtype, rngs=rngs)
        self.proj_out = linear(d, teacher_dim or d, ("embed", None), dtype=dtype, rngs=rngs)

    def __call__(self, z_q: jax.Array) -> jax.Array:
        x = self.encoder(self.proj_in(z_q).astype(jnp.float32))
        return self.proj_out(x).astype(jnp.float32)


def kmeans_init(tokenizer: BEATsTokenizer, fbank: jax.Array, key: jax.Array,
                axis_name: str | None = None) -> None:
    """Spherical k-means (10 iterations) of the codebook on a first batch.

    Call once, before training, under `nnx.jit` on the global batch.
    (`tokenizer_loss(..., init_key=key)` does the same lazily instead.)
    """
    tokenizer.quantize.kmeans_init(tokenizer.quantize_input(fbank), key, axis_name)


def codebook_metrics(vq: VectorQuantizer, ids: jax.Array,
                     dead_threshold: float = 1e-3) -> dict[str, jax.Array]:
    """Batch perplexity / used / dead codes, plus codes whose EMA usage fell below
    `dead_threshold` (assignments per step) - the ones k-means restarts would target."""
    usage = codebook_usage(ids, vq.num_codes)
    del usage["counts"]
    usage["ema_dead_codes"] = jnp.sum(vq.cluster_size[...] < dead_threshold)
    return usage


def tokenizer_loss(tokenizer: BEATsTokenizer, estimator: Estimator, fbank: jax.Array,
                   teacher_features: jax.Array, *, update_codebook: bool = True,
                   init_key: jax.Array | None = None, axis_name: str | None = None,
                   ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Tokenizer distillation loss -> (loss, aux).

    fbank (B, T, 128) normalised; teacher_features (B, N, D_t) the teacher's
    last-layer outputs for the same patches (computed by the caller without
    gradient). `update_codebook` applies the EMA update (training);
    `init_key` k-means-initialises an uninitialised codebook on this batch.
    loss = mean over patches of (1 - cos(estimate, teacher)) + beta * commitment.
    """
    z = tokenizer.quantize_input(fbank)
    z_q, commitment, ids = tokenizer.quantize(
        z, update=update_codebook, init_key=init_key, axis_name=axis_name)
    est = estimator(z_q)
    teacher = jax.lax.stop_gradient(teacher_features.astype(jnp.float32))
    if est.shape != teacher.shape:
        raise ValueError(f"estimator output {est.shape} != teacher features {teacher.shape}")
    cos = jnp.sum(l2_normalize(est) * l2_normalize(teacher), axis=-1)
    reconstruction = jnp.mean(1.0 - cos)
    aux = {"reconstruction": reconstruction, "commitment": commitment,
           **codebook_metrics(tokenizer.quantize, ids)}
    return reconstruction + commitment, aux
