"""BEATs self-distilled tokenizer objective (docs/SPEC.md section 8, iteration >= 2).

Never released officially; written from the paper and the released quantizer:
the tokenizer (`models.codebook.BEATsTokenizer`) maps patches to unit
vectors, quantised against an EMA codebook (`models.codebook.VectorQuantizer`);
an `models.beats.Estimator` reconstructs the teacher's (previous SSL model's)
last-layer features from the quantised vectors; loss = mean(1 - cos) +
commitment.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from matpac_jax.models.beats import Estimator
from matpac_jax.models.codebook import BEATsTokenizer, VectorQuantizer, codebook_usage
from matpac_jax.models.layers import l2_normalize


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
                   init_key: jax.Array | None = None,
                   ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Tokenizer distillation loss -> (loss, aux).

    fbank (B, T, 128) normalised; teacher_features (B, N, D_t) the teacher's
    last-layer outputs for the same patches (computed by the caller without
    gradient). `update_codebook` applies the EMA update (training);
    `init_key` k-means-initialises an uninitialised codebook on this batch.
    loss = mean over patches of (1 - cos(estimate, teacher)) + beta * commitment.
    """
    z = tokenizer.quantize_input(fbank)
    z_q, commitment, ids = tokenizer.quantize(z, update=update_codebook, init_key=init_key)
    est = estimator(z_q)
    teacher = jax.lax.stop_gradient(teacher_features.astype(jnp.float32))
    if est.shape != teacher.shape:
        raise ValueError(f"estimator output {est.shape} != teacher features {teacher.shape}")
    cos = jnp.sum(l2_normalize(est) * l2_normalize(teacher), axis=-1)
    reconstruction = jnp.mean(1.0 - cos)
    aux = {"reconstruction": reconstruction, "commitment": commitment,
           **codebook_metrics(tokenizer.quantize, ids)}
    return reconstruction + commitment, aux
