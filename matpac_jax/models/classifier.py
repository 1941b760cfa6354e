"""A pretrained encoder with a linear head: the fine-tuning network.

`pooling`:
- 'patch_mean': the mean over the kept, valid patch tokens (D-d). The
  official fine-tuning of both families: BEATs averages per-patch logits
  (the same by linearity); M2D's EVAR fine-tuning forces these "flat
  features" whenever its training mask is on (m2d/runtime_audio.py).
- 'frame_concat' (ViT only): patch features averaged over time per frequency
  row, rows concatenated: the time-mean of the (F * D)-d frame features of
  the linear probe (docs/SPEC.md section 6; 3840-d for ViT-B).
`head_norm`: 'batchnorm' (BatchNorm1d without affine before the Linear, as
M2D's EVAR head) or 'none' (BEATs' head).
Patch dropout (training only): `keep_ids` gathers a random subset of the
patch tokens (both families), or `token_mask` hides tokens from attention and
from the mean (ViT; M2D's structured mask, whose kept count varies per step).
Padded time steps (clips shorter than the crop) are left out of attention
(ViT) and of the mean.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from matpac_jax.models import layers

FAMILIES = ("vit", "beats")
POOLINGS = ("patch_mean", "frame_concat")
HEAD_NORMS = ("none", "batchnorm")


def feature_dim(encoder: nnx.Module, family: str, pooling: str) -> int:
    """Width of the pooled feature the head sees."""
    if family == "vit":
        return encoder.dim * (encoder.grid_f if pooling == "frame_concat" else 1)
    return encoder.cfg.encoder_embed_dim


class Classifier(nnx.Module):
    """`encoder` + Linear(feature_dim, num_classes) over pooled patch features."""

    def __init__(self, encoder: nnx.Module, family: str, num_classes: int, *,
                 pooling: str, head_norm: str, head_init_std: float, dtype, rngs: nnx.Rngs):
        if family not in FAMILIES:
            raise ValueError(f"family {family!r}; known: {FAMILIES}")
        if pooling not in POOLINGS or (family == "beats" and pooling != "patch_mean"):
            raise ValueError(f"config.finetune.pooling={pooling!r}: {family} encoders take "
                             f"{POOLINGS if family == 'vit' else POOLINGS[:1]}")
        if head_norm not in HEAD_NORMS:
            raise ValueError(f"config.finetune.head_norm={head_norm!r}; known: {HEAD_NORMS}")
        self.encoder, self.family, self.pooling = encoder, family, pooling
        d = feature_dim(encoder, family, pooling)
        # torch BatchNorm1d(affine=False): momentum 0.1 (flax: 0.9), eps 1e-5.
        self.head_norm = (nnx.BatchNorm(d, use_scale=False, use_bias=False, momentum=0.9,
                                        epsilon=1e-5, rngs=rngs)
                          if head_norm == "batchnorm" else None)
        init = (nnx.initializers.truncated_normal(head_init_std) if head_init_std > 0
                else layers.TORCH_LINEAR)
        self.head = layers.linear(d, num_classes, (None, "vocab"), init=init, dtype=dtype,
                                  rngs=rngs)

    def _vit(self, x, valid_frames, keep_ids, token_mask):
        enc = self.encoder
        p, gf = enc.patch, enc.grid_f
        tokens = enc.embed_patches(x)                       # (B, F*T, D) frequency-major
        b, n, _ = tokens.shape
        cols = n // gf
        row = jnp.broadcast_to(jnp.repeat(jnp.arange(gf), cols)[None], (b, n))
        valid = jnp.ones((b, n), bool)
        if valid_frames is not None:
            valid = jnp.tile(jnp.arange(cols), gf)[None] < (valid_frames[:, None] // p)
        masked = valid_frames is not None or token_mask is not None
        if token_mask is not None:
            valid = valid & token_mask
        if keep_ids is not None:
            take = lambda a: jnp.take_along_axis(a, keep_ids if a.ndim == 2 else keep_ids[..., None],
                                                 axis=1)
            tokens, row, valid = take(tokens), take(row), take(valid)
        key_mask = jnp.concatenate([jnp.ones_like(valid[:, :1]), valid], axis=1)
        seq = jnp.concatenate([enc.cls(b), tokens], axis=1)
        y = enc.stack(seq, key_mask if masked else None)[:, 1:]
        if self.pooling == "patch_mean":
            w = valid.astype(jnp.float32)[..., None]
            return (y.astype(jnp.float32) * w).sum(axis=1) / jnp.maximum(w.sum(axis=1), 1.0)
        member = jax.nn.one_hot(row, gf, dtype=jnp.float32) * valid[..., None]  # (B, n, F)
        pooled = jnp.einsum("bnf,bnd->bfd", member, y.astype(jnp.float32))
        pooled = pooled / jnp.maximum(member.sum(axis=1), 1.0)[..., None]
        return pooled.reshape(b, -1)

    def _beats(self, x, valid_frames, keep_ids, token_mask):
        if token_mask is not None:
            raise ValueError("token masks (structured patch dropout) need a ViT encoder")
        enc = self.encoder
        tokens = enc.embed(x)                               # (B, T/16 * 8, D) time-major
        b, n, _ = tokens.shape
        valid = jnp.ones((b, n), bool)
        if valid_frames is not None:
            p = enc.cfg.input_patch_size
            valid = (jnp.arange(n) // (128 // p))[None] < (valid_frames[:, None] // p)
        if keep_ids is None:
            y = enc(tokens)
        else:
            kept = jnp.take_along_axis(tokens, keep_ids[..., None], axis=1)
            y = enc(kept, keep_ids, n)
            valid = jnp.take_along_axis(valid, keep_ids, axis=1)
        w = valid.astype(jnp.float32)[..., None]
        return (y.astype(jnp.float32) * w).sum(axis=1) / jnp.maximum(w.sum(axis=1), 1.0)

    def features(self, x: jax.Array, valid_frames: jax.Array | None = None,
                 keep_ids: jax.Array | None = None,
                 token_mask: jax.Array | None = None) -> jax.Array:
        """(B, feature_dim) pooled features of normalised front-end crops `x`.

        `valid_frames` (B,): frames of real input (the rest is padding);
        `keep_ids` (B, n): indices of the patch tokens to keep; `token_mask`
        (B, N) bool: tokens to keep, the others hidden (patch dropout).
        """
        fn = self._vit if self.family == "vit" else self._beats
        return fn(x, valid_frames, keep_ids, token_mask)

    def __call__(self, x: jax.Array, valid_frames: jax.Array | None = None,
                 keep_ids: jax.Array | None = None,
                 token_mask: jax.Array | None = None) -> jax.Array:
        """(B, num_classes) float32 logits."""
        h = self.features(x, valid_frames, keep_ids, token_mask)
        if self.head_norm is not None:
            h = self.head_norm(h)
        return self.head(h).astype(jnp.float32)
