"""ViT encoder and predictor of M2D / MATPAC (docs/SPEC.md sections 2-3), Flax NNX.

Parameters are float32 and carry logical axis names (docs/ARCHITECTURE.md);
`dtype` is the compute dtype of the matmuls. LayerNorm and softmax run in
float32 and the residual stream stays float32 (unless
`config.model.activation_dtype` says otherwise, layers.set_activations). Modules are built without a
mesh; the trainer lays the variables out from their logical names
(training/sharding.py).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from matpac_jax.models import attention_kernel
from matpac_jax.models.layers import (
    call_layer, dot_product_attention, gelu, layer_norm, materialize_grad, partitioned, project,
    xavier_linear)
from matpac_jax.models.layers import dtype as layer_dtype


def sincos_pos_table(grid_f: int, grid_t: int, dim: int) -> np.ndarray:
    """Fixed 2-D sin-cos table (1 + F*T, dim), row 0 (CLS) zeros.

    Tokens are frequency-major (index f*T + t); the first dim/2 channels
    encode the time index, the last dim/2 the frequency index, each half
    [sin(pos*w), cos(pos*w)] with w = 1/10000**(arange(dim/4)/(dim/4)).
    """
    if dim % 4:
        raise ValueError(f"sin-cos table needs dim % 4 == 0, got {dim}")
    q = dim // 4
    w = 1.0 / 10000 ** (np.arange(q, dtype=np.float64) / q)
    f_idx, t_idx = np.meshgrid(np.arange(grid_f), np.arange(grid_t), indexing="ij")
    t = np.outer(t_idx.reshape(-1), w)
    f = np.outer(f_idx.reshape(-1), w)
    table = np.concatenate([np.sin(t), np.cos(t), np.sin(f), np.cos(f)], axis=1)
    return np.concatenate([np.zeros((1, dim)), table]).astype(np.float32)


@functools.lru_cache(maxsize=64)
def _table(grid_f: int, grid_t: int, dim: int, frames: int) -> np.ndarray:
    """Table truncated in time to `frames` token columns (short inputs)."""
    full = sincos_pos_table(grid_f, grid_t, dim)
    body = full[1:].reshape(grid_f, grid_t, dim)[:, :frames].reshape(-1, dim)
    out = np.concatenate([full[:1], body])
    out.setflags(write=False)
    return out


def _layer_norm(dim: int, *, eps: float = 1e-6, rngs: nnx.Rngs) -> nnx.LayerNorm:
    return layer_norm(dim, eps=eps, rngs=rngs)


class Attention(nnx.Module):
    """Fused-qkv multi-head self-attention (rows [q | k | v], head-major).

    `attention` ('xla' | 'cudnn' | 'pallas', `layers.set_attention`) picks who
    computes it; 'pallas' takes the projection with its columns grouped per
    head group (`attention_kernel.group_qkv`), same parameters.
    """

    def __init__(self, dim: int, num_heads: int, *, dtype=jnp.float32, rngs: nnx.Rngs):
        if dim % num_heads:
            raise ValueError(f"dim {dim} not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.qkv = xavier_linear(dim, 3 * dim, ("embed", "qkv"), dtype=dtype, rngs=rngs)
        self.proj = xavier_linear(dim, dim, ("heads", "embed"), dtype=dtype, rngs=rngs)
        self.attention = "xla"

    def __call__(self, x: jax.Array, key_mask: jax.Array | None = None) -> jax.Array:
        """key_mask (B, n) bool: False keys are ignored (padding; the 'pallas'
        kernels take none, so those calls run the XLA path)."""
        b, n, d = x.shape
        if self.attention == "pallas" and key_mask is None:
            group = lambda a: attention_kernel.group_qkv(a.astype(self.qkv.dtype),
                                                         self.num_heads)
            qkv = project(x, group(self.qkv.kernel[...]), None, self.qkv.dtype)
            return self.proj(attention_kernel.attention(qkv, self.num_heads,
                                                        group(self.qkv.bias[...])))
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads)
        mask = None if key_mask is None else key_mask[:, None, None, :]
        # XLA path computes logits and softmax in float32 for bf16 inputs.
        o = dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], mask=mask,
                                  implementation=self.attention)
        return self.proj(o.reshape(b, n, d))


class Mlp(nnx.Module):
    def __init__(self, dim: int, hidden: int, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.fc1 = xavier_linear(dim, hidden, ("embed", "mlp"), dtype=dtype, rngs=rngs)
        self.fc2 = xavier_linear(hidden, dim, ("mlp", "embed"), dtype=dtype, rngs=rngs)
        self.activations = "float32"  # layers.set_activations

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(gelu(self.fc1(x), self.activations))


class Block(nnx.Module):
    """Pre-norm ViT block: x += attn(ln1(x)); x += mlp(ln2(x)).

    `cpu_workaround` (layers.set_cpu_workarounds) cuts XLA:CPU's duplicated
    residual-gradient chain at the block input (`layers.materialize_grad`).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, *,
                 dtype=jnp.float32, rngs: nnx.Rngs):
        self.norm1 = _layer_norm(dim, rngs=rngs)
        self.attn = Attention(dim, num_heads, dtype=dtype, rngs=rngs)
        self.norm2 = _layer_norm(dim, rngs=rngs)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dtype=dtype, rngs=rngs)
        self.cpu_workaround = False

    def __call__(self, x: jax.Array, key_mask: jax.Array | None = None) -> jax.Array:
        if self.cpu_workaround:
            x = materialize_grad(x)
        x = x + self.attn(self.norm1(x), key_mask).astype(x.dtype)
        return x + self.mlp(self.norm2(x)).astype(x.dtype)


class TransformerStack(nnx.Module):
    """Blocks + final LayerNorm; the part the teacher mirrors for EMA.

    `remat` ('none' | 'full' | 'dots', `layers.REMAT_POLICIES`) trades
    recomputation for activation memory; `layers.set_remat` sets it from config.
    """

    def __init__(self, dim: int, depth: int, num_heads: int, mlp_ratio: float = 4.0, *,
                 dtype=jnp.float32, rngs: nnx.Rngs):
        self.dim, self.depth, self.num_heads, self.mlp_ratio = dim, depth, num_heads, mlp_ratio
        self.dtype = dtype
        self.blocks = nnx.List(
            [Block(dim, num_heads, mlp_ratio, dtype=dtype, rngs=rngs) for _ in range(depth)])
        self.norm = _layer_norm(dim, rngs=rngs)
        self.remat = "none"
        self.activations = "float32"  # the residual stream's dtype (layers.set_activations)

    def __call__(self, x: jax.Array, key_mask: jax.Array | None = None) -> jax.Array:
        x = x.astype(layer_dtype(self.activations))
        for blk in self.blocks:
            x = call_layer(blk, x, key_mask, remat=self.remat)
        return self.norm(x)


class ViTEncoder(nnx.Module):
    """Audio ViT over normalised log-mel (B, F, T), frequency-major tokens.

    The patch embedding is a Linear over flattened 16x16 patches (same maths
    as the stride-16 conv): patch pixel order is (kh, kw) row-major, so a
    torch conv weight (D, 1, p, p) maps to `kernel = w.reshape(D, p*p).T`.
    """

    def __init__(self, *, in_freq: int = 80, max_frames: int = 608, patch: int = 16,
                 dim: int = 768, depth: int = 12, num_heads: int = 12,
                 mlp_ratio: float = 4.0, dtype=jnp.float32, rngs: nnx.Rngs):
        if in_freq % patch or max_frames % patch:
            raise ValueError(f"input {in_freq}x{max_frames} not divisible by patch {patch}")
        self.in_freq, self.max_frames, self.patch, self.dim = in_freq, max_frames, patch, dim
        self.grid_f, self.grid_t = in_freq // patch, max_frames // patch
        self.patch_embed = xavier_linear(patch * patch, dim, ("patch", "embed"), dtype=dtype, rngs=rngs)
        self.cls_token = nnx.Param(partitioned(
            nnx.initializers.normal(0.02), (None, None, "embed"))(rngs.params(), (1, 1, dim)))
        self.stack = TransformerStack(dim, depth, num_heads, mlp_ratio, dtype=dtype, rngs=rngs)

    def pos_table(self, frames: int | None = None) -> np.ndarray:
        """(1 + F*frames, D) constant table, truncated in time; not a parameter."""
        return _table(self.grid_f, self.grid_t, self.dim, self.grid_t if frames is None else frames)

    def patchify(self, x: jax.Array) -> jax.Array:
        """(B, F, T) -> (B, F/p * T/p, p*p), frequency-major tokens."""
        if x.ndim == 4:  # (B, 1, F, T) as the torch code feeds it
            x = x[:, 0]
        b, f, t = x.shape
        p = self.patch
        if f != self.in_freq:
            raise ValueError(f"expected {self.in_freq} frequency bins, got {f}")
        if t % p or t > self.max_frames:
            raise ValueError(f"frames {t} must be a multiple of {p} and <= {self.max_frames}")
        x = x.reshape(b, f // p, p, t // p, p).transpose(0, 1, 3, 2, 4)
        return x.reshape(b, (f // p) * (t // p), p * p)

    def embed_patches(self, x: jax.Array) -> jax.Array:
        """(B, F, T) -> (B, L, D) patch tokens + (time-truncated) sin-cos table."""
        tokens = self.patch_embed(self.patchify(x))
        frames = tokens.shape[1] // self.grid_f
        return tokens.astype(jnp.float32) + self.pos_table(frames)[1:]

    def cls(self, batch: int) -> jax.Array:
        """(B, 1, D) CLS token plus its (zero) table row."""
        tok = self.cls_token[...] + self.pos_table(1)[:1]
        return jnp.broadcast_to(tok, (batch, 1, self.dim))

    def encode_tokens(self, tokens_with_cls: jax.Array) -> jax.Array:
        return self.stack(tokens_with_cls)

    def __call__(self, x: jax.Array, valid_frames: jax.Array | None = None) -> jax.Array:
        """Unmasked encoder: (B, F, T) -> (B, 1 + L, D) after the final LN.

        `valid_frames` (B,) (multiples of `patch`) marks time-padded inputs:
        padded tokens are hidden from attention, so valid outputs equal those
        of the unpadded input (one compiled shape serves many lengths).
        """
        tokens = self.embed_patches(x)
        key_mask = None
        if valid_frames is not None:
            cols = tokens.shape[1] // self.grid_f
            t_idx = jnp.tile(jnp.arange(cols), self.grid_f)  # frequency-major tokens
            key_mask = t_idx[None, :] < (valid_frames[:, None] // self.patch)
            key_mask = jnp.concatenate([jnp.ones_like(key_mask[:, :1]), key_mask], axis=1)
        return self.stack(jnp.concatenate([self.cls(tokens.shape[0]), tokens], axis=1), key_mask)


class Predictor(nnx.Module):
    """M2D/MATPAC predictor: fills masked positions, returns them in teacher order."""

    def __init__(self, *, grid_f: int, grid_t: int, dim: int = 768, pred_dim: int = 512,
                 depth: int = 8, num_heads: int = 16, mlp_ratio: float = 4.0,
                 dtype=jnp.float32, rngs: nnx.Rngs):
        self.grid_f, self.grid_t, self.pred_dim = grid_f, grid_t, pred_dim
        self.embed = xavier_linear(dim, pred_dim, ("embed", None), dtype=dtype, rngs=rngs)
        self.mask_token = nnx.Param(partitioned(
            nnx.initializers.normal(0.02), (None, None, "embed"))(rngs.params(), (1, 1, pred_dim)))
        self.stack = TransformerStack(pred_dim, depth, num_heads, mlp_ratio, dtype=dtype, rngs=rngs)
        self.pred = xavier_linear(pred_dim, dim, (None, "embed"), dtype=dtype, rngs=rngs)

    def __call__(self, latent: jax.Array, ids_restore: jax.Array,
                 ids_shuffle: jax.Array | None = None) -> jax.Array:
        """latent (B, 1+keep, D) student output -> (B, L-keep, D) predictions."""
        x = self.embed(latent).astype(jnp.float32)
        b, n, dp = x.shape
        num_tokens, keep = ids_restore.shape[1], n - 1
        mask = jnp.broadcast_to(self.mask_token[...], (b, num_tokens - keep, dp))
        x_ = jnp.concatenate([x[:, 1:], mask], axis=1)
        x_ = jnp.take_along_axis(x_, ids_restore[..., None], axis=1)
        table = _table(self.grid_f, self.grid_t, self.pred_dim, num_tokens // self.grid_f)
        x = jnp.concatenate([x[:, :1], x_], axis=1) + table
        y = self.stack(x)[:, 1:]
        if ids_shuffle is None:
            ids_shuffle = jnp.argsort(ids_restore, axis=1)
        y = jnp.take_along_axis(y, ids_shuffle[:, keep:, None], axis=1)
        return self.pred(y)
