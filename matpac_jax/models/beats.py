"""BEATs backbone (docs/SPEC.md section 8) and the label predictor / estimator
networks of our BEATs training stages, Flax NNX.

Numerically the same network as microsoft/unilm `beats/` (post-LN DeepNorm
layers, conv positional embedding, gated T5 relative position bias), written
so that the encoder can also run on a subset of patches for masked audio
modelling. Parameters are float32 with logical axis names
(docs/ARCHITECTURE.md); `dtype` is the matmul compute dtype; LayerNorm,
softmax, the residual stream and all codebook maths stay float32.

Official details kept on purpose:
- attention logits are `q.k / sqrt(d_head)` plus the position bias, which is
  NOT scaled: the official `alpha = 32` trick (q / 32, subtract row max,
  times 32) only changes the softmax by a constant shift, so it is dropped;
- the relative bias table lives in layer 0; every layer gates the same raw
  (ungated) bias with its own `grep_linear`/`grep_a`, from the unscaled
  projected query (with bias);
- relative bucket maths runs in float32, as torch does (bucket edges match).
Not implemented (training-only, not needed for parity): attention-prob
dropout, LayerDrop (`encoder_layerdrop`), padding masks (use fixed-length
clips, docs/SPEC.md section 8), the `glu` activation.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from matpac_jax.models import layers
from matpac_jax.models.beats_layers import (BEATsConfig, ConvPositionalEmbedding,
                                            TransformerLayer, drop, dropout, grad_multiply,
                                            layer_norm, linear)
from matpac_jax.models.layers import partitioned


def patchify(fbank: jax.Array, patch: int = 16) -> jax.Array:
    """(B, T, F) -> (B, T/p * F/p, p*p), time-major tokens (index t*F/p + f).

    Leftover frames (T % p) are dropped, as the official stride-p conv does;
    pixels inside a patch are (time, freq) row-major like the conv kernel.
    """
    b, t, f = fbank.shape
    if f % patch:
        raise ValueError(f"{f} frequency bins not divisible by patch {patch}")
    gt, gf = t // patch, f // patch
    x = fbank[:, : gt * patch].reshape(b, gt, patch, gf, patch)
    return x.transpose(0, 1, 3, 2, 4).reshape(b, gt * gf, patch * patch)


def gather_rows(x: jax.Array, idx: jax.Array) -> jax.Array:
    """x[b, idx[b]] for each example: (B, N, ...) at (B, n) -> (B, n, ...).

    A gather whose batch dimension XLA sees as such, so a batch sharded over
    devices stays sharded; `x[jnp.arange(B)[:, None], idx]` makes the SPMD
    partitioner all-gather the whole batch onto every device."""
    return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)


def scatter_rows(x: jax.Array, idx: jax.Array, values: jax.Array) -> jax.Array:
    """x with x[b, idx[b]] = values[b] for each example (batched, as `gather_rows`)."""
    return jax.vmap(lambda xb, ib, vb: xb.at[ib].set(vb))(x, idx, values)


class TransformerEncoder(nnx.Module):
    """Conv positional embedding + LayerNorm + layers (official `encoder.*`)."""

    def __init__(self, cfg: BEATsConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.relative = cfg.relative_position_embedding
        self.layer_norm_first = cfg.layer_norm_first
        self.grad_decay = cfg.layer_wise_gradient_decay_ratio
        self.pos_conv = ConvPositionalEmbedding(
            cfg.encoder_embed_dim, cfg.conv_pos, cfg.conv_pos_groups, rngs=rngs)
        self.layer_norm = layer_norm(cfg.encoder_embed_dim, rngs=rngs)
        self.dropout = dropout(cfg.dropout, rngs)
        self.layers = nnx.List([
            TransformerLayer(cfg, has_bias_table=self.relative and i == 0, dtype=dtype, rngs=rngs)
            for i in range(cfg.encoder_layers)])
        self.remat = "none"  # layers.REMAT_POLICIES, set from config by layers.set_remat
        self.activations = "float32"  # the residual stream's dtype (layers.set_activations)

    def __call__(self, x: jax.Array, positions: jax.Array | None = None,
                 num_patches: int | None = None) -> jax.Array:
        """(B, n, D) -> (B, n, D); see `BEATsEncoder.__call__` for `positions`."""
        x = x.astype(layers.dtype(self.activations))
        b, n, d = x.shape
        if positions is None:
            x = x + self.pos_conv(x).astype(x.dtype)
            positions = jnp.arange(n)[None]
        else:
            if num_patches is None:
                raise ValueError("num_patches (full grid length) is needed with positions")
            positions = positions.astype(jnp.int32)
            full = scatter_rows(jnp.zeros((b, num_patches, d), jnp.float32), positions, x)
            x = x + gather_rows(self.pos_conv(full), positions).astype(x.dtype)
        if not self.layer_norm_first:
            x = self.layer_norm(x)
        x = drop(self.dropout, x)
        pos_bias = self.layers[0].self_attn.compute_bias(positions) if self.relative else None
        for layer in self.layers:
            if self.grad_decay != 1.0:
                x = grad_multiply(x, self.grad_decay)
            x = layers.call_layer(layer, x, pos_bias, remat=self.remat)
        if self.layer_norm_first:
            x = self.layer_norm(x)
        return x


class BEATsEncoder(nnx.Module):
    """BEATs: fbank patches -> LayerNorm -> projection -> TransformerEncoder.

    Input of `extract_features` is the normalised fbank (B, T, 128) of
    `matpac_jax.data.frontends` (`normalize(beats_fbank(wave), 'beats')`).
    """

    def __init__(self, cfg: BEATsConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.cfg, self.dtype = cfg, dtype
        p, e, d = cfg.input_patch_size, cfg.embed_dim, cfg.encoder_embed_dim
        self.patch_embedding = linear(p * p, e, ("patch", "embed"), use_bias=cfg.conv_bias,
                                       dtype=dtype, rngs=rngs)
        self.layer_norm = layer_norm(e, rngs=rngs)
        self.post_extract_proj = (
            linear(e, d, (None, "embed"), dtype=dtype, rngs=rngs) if e != d else None)
        self.dropout_input = dropout(cfg.dropout_input, rngs)
        self.encoder = TransformerEncoder(cfg, dtype=dtype, rngs=rngs)
        finetuned = cfg.finetuned_model  # fine-tuned releases carry their classifier
        self.predictor = linear(d, cfg.predictor_class, ("embed", "vocab"),
                                 dtype=dtype, rngs=rngs) if finetuned else None

    def num_patches(self, num_frames: int) -> int:
        p = self.cfg.input_patch_size
        return (num_frames // p) * (128 // p)

    def embed(self, fbank: jax.Array) -> jax.Array:
        """(B, T, 128) normalised fbank -> (B, N, D) tokens, before the encoder."""
        x = patchify(fbank.astype(jnp.float32), self.cfg.input_patch_size)
        x = self.layer_norm(self.patch_embedding(x).astype(jnp.float32))
        if self.post_extract_proj is not None:
            x = self.post_extract_proj(x).astype(jnp.float32)
        return drop(self.dropout_input, x)

    def __call__(self, tokens: jax.Array, positions: jax.Array | None = None,
                 num_patches: int | None = None) -> jax.Array:
        """Encoder on all tokens, or on a subset (masked audio modelling).

        `tokens` (B, n, D) from `embed`. With `positions` (B, n) int, the
        tokens are the kept patches, `positions` their indices in the full
        time-major grid of `num_patches` patches. The relative position bias
        then uses those original indices, and the conv positional embedding
        is computed on the full grid with the dropped patches set to zero
        (as the official code zeroes padded frames), then gathered at the
        kept positions: no information leaks from masked patches.
        """
        return self.encoder(tokens, positions, num_patches)

    def extract_features(self, fbank: jax.Array) -> jax.Array:
        """(B, T, 128) normalised fbank -> (B, N, D) last-layer features."""
        return self(self.embed(fbank))


# ----------------------------------------------------------------------------
# Networks of the training stages (not in the official release)


class LabelPredictor(nnx.Module):
    """Transformer over the full grid -> codebook logits at the masked positions.

    Visible positions carry the encoder outputs, masked positions a learned
    mask embedding; the layers get positions from their own conv positional
    embedding and relative position bias (same blocks as the encoder;
    `layer_norm_first=False` gives DeepNorm post-LN, True pre-LN + final LN).
    """

    def __init__(self, encoder_cfg: BEATsConfig, num_classes: int = 1024, *,
                 num_layers: int = 3, num_heads: int = 12, ffn_dim: int | None = None,
                 layer_norm_first: bool = False, dtype=jnp.float32, rngs: nnx.Rngs):
        d = encoder_cfg.encoder_embed_dim
        self.cfg = dataclasses.replace(
            encoder_cfg, encoder_layers=num_layers, encoder_attention_heads=num_heads,
            encoder_ffn_embed_dim=ffn_dim or 4 * d, layer_norm_first=layer_norm_first,
            deep_norm=not layer_norm_first, relative_position_embedding=True,
            gru_rel_pos=True, layer_wise_gradient_decay_ratio=1.0, finetuned_model=False)
        self.num_classes = num_classes
        self.mask_emb = nnx.Param(partitioned(nnx.initializers.normal(0.02), ("embed",))(
            rngs.params(), (d,)))
        self.encoder = TransformerEncoder(self.cfg, dtype=dtype, rngs=rngs)
        self.head = linear(d, num_classes, ("embed", "vocab"), dtype=dtype, rngs=rngs)

    def __call__(self, visible: jax.Array, keep: jax.Array, masked: jax.Array) -> jax.Array:
        """visible (B, n_keep, D) encoder outputs at patch indices `keep` (B, n_keep)
        -> (B, n_mask, C) float32 logits at patch indices `masked` (B, n_mask)."""
        b, _, d = visible.shape
        n = keep.shape[1] + masked.shape[1]
        x = jnp.broadcast_to(self.mask_emb[...], (b, n, d))
        x = scatter_rows(x, keep, visible.astype(jnp.float32))
        x = gather_rows(self.encoder(x), masked)
        return self.head(x).astype(jnp.float32)


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
