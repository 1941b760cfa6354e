"""BEATs masked audio modelling (docs/SPEC.md section 8): predict tokenizer labels of masked patches.

The official pre-training code was never released; this follows the paper:
75 % of patches masked per sample, only visible patches go through the
encoder, a Transformer label predictor sees the encoder outputs at visible
positions and a learned mask embedding at masked ones (on the full patch
grid), and the loss is cross-entropy over the codebook at masked positions
only. Predictor size is not given by the paper: default 3 layers at the
encoder width, 12 heads (as a public reproduction), built from the same
BEATs layers (`models.beats.LabelPredictor`).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from matpac_jax.models.beats import BEATsEncoder, LabelPredictor, gather_rows


class MaskIndices(NamedTuple):
    """Per-sample patch indices: `keep` (B, n_keep) sorted, `masked` (B, n_mask) sorted."""

    keep: jax.Array
    masked: jax.Array


def random_mask(key: jax.Array, batch: int, num_patches: int, ratio: float = 0.75) -> MaskIndices:
    """Uniformly random mask with a fixed count, `int(N * ratio)` masked per sample.

    A fixed count keeps shapes static (one compiled step) and batches dense.
    """
    num_mask = int(num_patches * ratio)
    if not 0 < num_mask < num_patches:
        raise ValueError(f"mask ratio {ratio} leaves nothing to encode or predict "
                         f"({num_patches} patches)")
    order = jnp.argsort(jax.random.uniform(key, (batch, num_patches)), axis=1)
    keep = jnp.sort(order[:, : num_patches - num_mask], axis=1)
    masked = jnp.sort(order[:, num_patches - num_mask:], axis=1)
    return MaskIndices(keep.astype(jnp.int32), masked.astype(jnp.int32))


def mam_loss(encoder: BEATsEncoder, predictor: LabelPredictor, fbank: jax.Array,
             labels: jax.Array, *, rng: jax.Array | None = None,
             mask: MaskIndices | None = None, mask_ratio: float = 0.75,
             ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Masked audio modelling loss -> (loss, {'accuracy', 'num_masked'}).

    fbank (B, T, 128) normalised; labels (B, N) int tokenizer labels of all
    patches (time-major, N = T/16 * 8). Give `mask` or `rng` (mask drawn
    with `random_mask(rng, B, N, mask_ratio)`). Cross-entropy in float32 over
    the codebook, at masked positions only, mean over the batch's masked
    patches (under jit on a sharded batch: the global mean).
    """
    tokens = encoder.embed(fbank)
    b, n, _ = tokens.shape
    if labels.shape != (b, n):
        raise ValueError(f"labels {labels.shape} do not match the {b}x{n} patch grid")
    if mask is None:
        if rng is None:
            raise ValueError("mam_loss needs a mask or an rng to draw one")
        mask = random_mask(rng, b, n, mask_ratio)
    visible = encoder(gather_rows(tokens, mask.keep), mask.keep, num_patches=n)
    logits = predictor(visible, mask.keep, mask.masked)
    target = gather_rows(labels, mask.masked).astype(jnp.int32)
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, target[..., None], axis=-1)[..., 0]
    accuracy = jnp.mean((jnp.argmax(logits, -1) == target).astype(jnp.float32))
    return nll.mean(), {"accuracy": accuracy, "num_masked": jnp.asarray(target.size)}
