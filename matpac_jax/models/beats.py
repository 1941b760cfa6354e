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
import functools
import math
from collections.abc import Mapping
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from matpac_jax.models import attention_kernel, layers
from matpac_jax.models.layers import Init, partitioned

LN_EPS = 1e-5


def _param(value: jax.Array, names: Sequence[str | None]) -> nnx.Param:
    """A Param holding a precomputed value, with logical axis names."""
    return nnx.Param(partitioned(lambda *_, **__: value, names)(None, value.shape))


# ----------------------------------------------------------------------------
# Config


@dataclasses.dataclass(frozen=True)
class BEATsConfig:
    """Official `BEATsConfig` / `TokenizersConfig` fields and defaults.

    One deviation: `input_patch_size` defaults to 16 (official placeholder -1;
    every released cfg sets 16). `quant_n`/`quant_dim` only matter for
    tokenizers.
    """

    input_patch_size: int = 16
    embed_dim: int = 512
    conv_bias: bool = False
    encoder_layers: int = 12
    encoder_embed_dim: int = 768
    encoder_ffn_embed_dim: int = 3072
    encoder_attention_heads: int = 12
    activation_fn: str = "gelu"
    layer_wise_gradient_decay_ratio: float = 1.0
    layer_norm_first: bool = False
    deep_norm: bool = False
    dropout: float = 0.1
    attention_dropout: float = 0.1
    activation_dropout: float = 0.0
    encoder_layerdrop: float = 0.0
    dropout_input: float = 0.0
    conv_pos: int = 128
    conv_pos_groups: int = 16
    relative_position_embedding: bool = False
    num_buckets: int = 320
    max_distance: int = 1280
    gru_rel_pos: bool = False
    finetuned_model: bool = False
    predictor_dropout: float = 0.1
    predictor_class: int = 527
    quant_n: int = 1024
    quant_dim: int = 256

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any]) -> "BEATsConfig":
        """From an official cfg dict; unknown keys are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in dict(cfg).items() if k in names})

    @property
    def deep_norm_alpha(self) -> float:
        return (2 * self.encoder_layers) ** 0.25 if self.deep_norm else 1.0


# The released BEATs_iter3 cfg, where it differs from the defaults above
# (training/defaults.beats pre-trains this architecture).
RELEASED = dict(deep_norm=True, relative_position_embedding=True, gru_rel_pos=True,
                max_distance=800, layer_wise_gradient_decay_ratio=0.6, dropout=0.0,
                attention_dropout=0.0)


_ACTIVATIONS = {
    "gelu": functools.partial(jax.nn.gelu, approximate=False),  # fairseq gelu = erf
    "gelu_accurate": functools.partial(jax.nn.gelu, approximate=True),
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "linear": lambda x: x,
}


def _activation(name: str):
    if name not in _ACTIVATIONS:
        raise ValueError(f"activation_fn {name!r} not supported; use one of {sorted(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]


# ----------------------------------------------------------------------------
# Small helpers


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


def relative_position_bucket(rel: jax.Array, num_buckets: int, max_distance: int) -> jax.Array:
    """Bidirectional T5 bucket of `rel = key_pos - query_pos` (float32 like torch)."""
    half = num_buckets // 2
    max_exact = half // 2
    bucket = jnp.where(rel > 0, half, 0)
    n = jnp.abs(rel)
    scale = jnp.float32(math.log(max_distance / max_exact))
    ratio = jnp.maximum(n, 1).astype(jnp.float32) / jnp.float32(max_exact)
    large = max_exact + (jnp.log(ratio) / scale * jnp.float32(half - max_exact)).astype(jnp.int32)
    large = jnp.minimum(large, half - 1)
    return bucket + jnp.where(n < max_exact, n, large)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def grad_multiply(x: jax.Array, scale: float) -> jax.Array:
    """Identity forward, gradient times `scale` (layer-wise gradient decay)."""
    return x


def _gm_fwd(x, scale):
    return x, None


def _gm_bwd(scale, _, g):
    return (g * scale,)


grad_multiply.defvjp(_gm_fwd, _gm_bwd)


def linear(din: int, dout: int, names: tuple, *, dtype, rngs: nnx.Rngs,
           init: Init | None = None, use_bias: bool = True) -> nnx.Linear:
    """Linear with torch's default init unless `init` is given (bias zeros here)."""
    return layers.linear(din, dout, names, init=init or layers.TORCH_LINEAR, dtype=dtype,
                         rngs=rngs, use_bias=use_bias)


def layer_norm(dim: int, *, rngs: nnx.Rngs) -> nnx.LayerNorm:
    """float32 LayerNorm, eps 1e-5 (BEATs)."""
    return layers.layer_norm(dim, eps=LN_EPS, rngs=rngs)


def _dropout(rate: float, rngs: nnx.Rngs) -> nnx.Dropout | None:
    """No module (and no RNG state) when the rate is 0."""
    return nnx.Dropout(rate, rngs=rngs) if rate > 0 else None


def _drop(layer: nnx.Dropout | None, x: jax.Array) -> jax.Array:
    return x if layer is None else layer(x)


def xavier_normal(gain: float) -> Init:
    return jax.nn.initializers.variance_scaling(gain * gain, "fan_avg", "normal")


# ----------------------------------------------------------------------------
# Backbone


def _conv1d(x: jax.Array, w: jax.Array, groups: int, pad: int) -> jax.Array:
    return jax.lax.conv_general_dilated(x, w, window_strides=(1,), padding=[(pad, pad)],
                                        dimension_numbers=("NWC", "WIO", "NWC"),
                                        feature_group_count=groups)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def grouped_conv1d(x: jax.Array, w: jax.Array, groups: int, pad: int) -> jax.Array:
    """Grouped 1-D convolution x (B, N, D), w (K, D/G, D) -> (B, N + 2*pad - K + 1, D).

    An XLA:CPU workaround (`layers.set_cpu_workarounds`): same maths as the
    autodiff of `lax.conv_general_dilated`, but the weight gradient is
    written as a plain forward grouped convolution (batch and sequence
    swapped into the feature and window axes). XLA:CPU lowers the autodiff
    form (a `batch_group_count` convolution) to a slow loop
    (docs/BENCHMARKS.md).
    """
    return _conv1d(x, w, groups, pad)


def _grouped_conv1d_fwd(x, w, groups, pad):
    return _conv1d(x, w, groups, pad), (x, w)


def _grouped_conv1d_bwd(groups, pad, res, dy):
    x, w = res
    (dx,) = jax.vjp(lambda x_: _conv1d(x_, w, groups, pad), x)[1](dy)
    b, n, d = x.shape
    k, c, _ = w.shape
    xp = jnp.pad(x, ((0, 0), (pad, pad), (0, 0)))
    # dw[k, i, (g, o)] = sum_{b, t} xp[b, t + k, (g, i)] * dy[b, t, (g, o)]: a convolution
    # of xp (batch i, window t, features (g, b)) with dy as the kernel (window t, in b).
    lhs = xp.reshape(b, n + 2 * pad, groups, c).transpose(3, 1, 2, 0).reshape(c, n + 2 * pad,
                                                                             groups * b)
    rhs = dy.transpose(1, 0, 2)  # (t, b, (g, o))
    dw = jax.lax.conv_general_dilated(lhs, rhs, (1,), [(0, 0)],
                                      dimension_numbers=("NWC", "WIO", "NWC"),
                                      feature_group_count=groups)  # (i, k, (g, o))
    return dx, dw.transpose(1, 0, 2).astype(w.dtype)


grouped_conv1d.defvjp(_grouped_conv1d_fwd, _grouped_conv1d_bwd)


class ConvPositionalEmbedding(nnx.Module):
    """Grouped Conv1d (kernel K, pad K/2) with weight norm over the kernel axis.

    `weight = g[k] * v[k] / ||v[k]||` (norm over in/out channels per tap, torch
    `weight_norm(dim=2)`); the last output frame is dropped (even K), then GELU.
    Layout: `weight_v` (K, D/G, D) = torch (D, D/G, K) transposed; `weight_g` (K,).
    `cpu_workaround` takes the weight gradient from `grouped_conv1d`.
    """

    def __init__(self, dim: int, kernel: int, groups: int, *, rngs: nnx.Rngs):
        if dim % groups:
            raise ValueError(f"width {dim} not divisible by {groups} conv groups")
        self.kernel, self.groups = kernel, groups
        std = math.sqrt(4.0 / (kernel * dim))
        v = std * jax.random.normal(rngs.params(), (kernel, dim // groups, dim), jnp.float32)
        self.weight_v = _param(v, ("conv", None, "embed"))
        self.weight_g = _param(jnp.sqrt(jnp.sum(v * v, axis=(1, 2))), ("conv",))
        self.bias = _param(jnp.zeros((dim,), jnp.float32), ("embed",))
        self.cpu_workaround = False

    def __call__(self, x: jax.Array) -> jax.Array:
        v = self.weight_v[...]
        w = v * (self.weight_g[...] / jnp.sqrt(jnp.sum(v * v, axis=(1, 2))))[:, None, None]
        conv = grouped_conv1d if self.cpu_workaround else _conv1d
        # Per device on its batch share under the training mesh: XLA's GPU
        # partitioner all-gathered the batch for this grouped convolution
        # (4 x 3.2 GB per step on 8 H100s, docs/SCALING.md).
        y = layers.batch_parallel(lambda x, w: [conv(x, w, self.groups, self.kernel // 2)],
                                  (x.astype(jnp.float32), w), (True, False, True))[0]
        if self.kernel % 2 == 0:
            y = y[:, :-1]
        return jax.nn.gelu(y + self.bias[...], approximate=False)


class MultiheadAttention(nnx.Module):
    """Self-attention with (optionally gated) relative position bias; `attention`
    ('xla' | 'cudnn' | 'pallas', `layers.set_attention`) picks who computes it
    ('pallas': one q | k | v projection, the bias's gate and table applied
    inside the kernel)."""

    def __init__(self, cfg: BEATsConfig, *, has_bias_table: bool, dtype, rngs: nnx.Rngs):
        d, h = cfg.encoder_embed_dim, cfg.encoder_attention_heads
        if d % h:
            raise ValueError(f"width {d} not divisible by {h} heads")
        self.num_heads, self.head_dim = h, d // h
        self.num_buckets, self.max_distance = cfg.num_buckets, cfg.max_distance
        self.gated = cfg.gru_rel_pos
        if cfg.deep_norm:
            beta = (8 * cfg.encoder_layers) ** -0.25
            qk_init, vo_init = xavier_normal(1.0), xavier_normal(beta)
        else:
            qk_init = vo_init = nnx.initializers.normal(0.02)
        mk = functools.partial(linear, dtype=dtype, rngs=rngs)
        self.q_proj = mk(d, d, ("embed", "qkv"), init=qk_init)
        self.k_proj = mk(d, d, ("embed", "qkv"), init=qk_init)
        self.v_proj = mk(d, d, ("embed", "qkv"), init=vo_init)
        self.out_proj = mk(d, d, ("heads", "embed"), init=vo_init)
        self.relative_attention_bias = nnx.Param(partitioned(
            nnx.initializers.normal(0.02), (None, None))(rngs.params(), (cfg.num_buckets, h))
        ) if has_bias_table else None
        if self.gated:
            self.grep_linear = mk(self.head_dim, 8, (None, None), init=nnx.initializers.normal(0.02))
            self.grep_a = _param(jnp.ones((h,), jnp.float32), (None,))
        self.attention = "xla"

    def compute_bias(self, positions: jax.Array) -> jax.Array:
        """(B|1, n) patch indices -> raw bias (B|1, H, n, n), float32."""
        rel = positions[:, None, :] - positions[:, :, None]  # key - query
        buckets = relative_position_bucket(rel, self.num_buckets, self.max_distance)
        table = self.relative_attention_bias[...]
        return jnp.moveaxis(table[buckets], -1, 1)

    def _gate(self, logits: jax.Array) -> jax.Array:
        """(B, n, H, 8) `grep_linear` outputs -> (B, H, n) gate of the position bias."""
        b, n = logits.shape[:2]
        g = logits.astype(jnp.float32).reshape(b, n, self.num_heads, 2, 4)
        g = jax.nn.sigmoid(g.sum(-1))
        return jnp.swapaxes(g[..., 0] * (g[..., 1] * self.grep_a[...] - 1.0) + 2.0, 1, 2)

    def _gate_logits(self, x: jax.Array) -> jax.Array:
        """`grep_linear(q_proj(x))` as one projection of x: both are linear, so
        `q_proj`'s kernel and bias go through `grep_linear` first (the queries
        are never sliced out of the kernels' fused q | k | v rows)."""
        h, d = self.num_heads, self.head_dim
        wg, bg = self.grep_linear.kernel[...], self.grep_linear.bias[...]
        w = jnp.einsum("Dhd,de->Dhe", self.q_proj.kernel[...].reshape(-1, h, d), wg)
        b = self.q_proj.bias[...].reshape(h, d) @ wg + bg
        dt = self.q_proj.dtype
        return jnp.einsum("bnD,Dhe->bnhe", x.astype(dt), w.astype(dt),
                          preferred_element_type=jnp.float32) + b

    def _kernel(self, x: jax.Array, pos_bias: jax.Array | None) -> jax.Array:
        h, dt = self.num_heads, self.q_proj.dtype
        group = lambda part: attention_kernel.group_qkv(jnp.concatenate(
            [getattr(p, part)[...].astype(dt) for p in (self.q_proj, self.k_proj, self.v_proj)],
            -1), h)
        qkv, bias = layers.project(x, group("kernel"), None, dt), group("bias")
        gate = None
        if pos_bias is not None:
            gate = (self._gate(self._gate_logits(x)) if self.gated
                    else jnp.ones((x.shape[0], h, x.shape[1]), jnp.float32))
        return self.out_proj(attention_kernel.attention(qkv, h, bias, gate, pos_bias))

    def __call__(self, x: jax.Array, pos_bias: jax.Array | None) -> jax.Array:
        if self.attention == "pallas":
            return self._kernel(x, pos_bias)
        b, n, d = x.shape
        split = lambda y: y.reshape(b, n, self.num_heads, self.head_dim)
        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        bias = pos_bias
        if pos_bias is not None and self.gated:
            bias = self._gate(self.grep_linear(q))[..., None] * pos_bias
        if bias is not None:
            bias = bias.astype(q.dtype)
        # XLA path computes logits and softmax in float32 for bf16 inputs.
        o = layers.dot_product_attention(q, k, v, bias=bias, implementation=self.attention)
        return self.out_proj(o.reshape(b, n, d))


class TransformerLayer(nnx.Module):
    """Post-LN (DeepNorm when alpha > 1) or pre-LN fairseq encoder layer."""

    def __init__(self, cfg: BEATsConfig, *, has_bias_table: bool, dtype, rngs: nnx.Rngs):
        d, f = cfg.encoder_embed_dim, cfg.encoder_ffn_embed_dim
        self.layer_norm_first = cfg.layer_norm_first
        self.alpha = cfg.deep_norm_alpha
        self.act = _activation(cfg.activation_fn)
        self.act_name = cfg.activation_fn
        self.activations = "float32"  # layers.set_activations
        self.self_attn = MultiheadAttention(cfg, has_bias_table=has_bias_table, dtype=dtype, rngs=rngs)
        self.self_attn_layer_norm = layer_norm(d, rngs=rngs)
        init = (xavier_normal((8 * cfg.encoder_layers) ** -0.25) if cfg.deep_norm
                else nnx.initializers.normal(0.02))
        self.fc1 = linear(d, f, ("embed", "mlp"), init=init, dtype=dtype, rngs=rngs)
        self.fc2 = linear(f, d, ("mlp", "embed"), init=init, dtype=dtype, rngs=rngs)
        self.final_layer_norm = layer_norm(d, rngs=rngs)
        self.dropout1 = _dropout(cfg.dropout, rngs)
        self.dropout2 = _dropout(cfg.activation_dropout, rngs)
        self.dropout3 = _dropout(cfg.dropout, rngs)

    def _ffn(self, x: jax.Array) -> jax.Array:
        h = self.fc1(x)
        h = layers.gelu(h, self.activations) if self.act_name == "gelu" else self.act(h)
        return _drop(self.dropout3, self.fc2(_drop(self.dropout2, h))).astype(x.dtype)

    def __call__(self, x: jax.Array, pos_bias: jax.Array | None) -> jax.Array:
        if self.layer_norm_first:
            x = x + _drop(self.dropout1, self.self_attn(self.self_attn_layer_norm(x), pos_bias)
                          ).astype(x.dtype)
            return x + self._ffn(self.final_layer_norm(x))
        a = _drop(self.dropout1, self.self_attn(x, pos_bias)).astype(x.dtype)
        x = self.self_attn_layer_norm(x * self.alpha + a)
        return self.final_layer_norm(x * self.alpha + self._ffn(x))


class TransformerEncoder(nnx.Module):
    """Conv positional embedding + LayerNorm + layers (official `encoder.*`)."""

    def __init__(self, cfg: BEATsConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.relative = cfg.relative_position_embedding
        self.layer_norm_first = cfg.layer_norm_first
        self.grad_decay = cfg.layer_wise_gradient_decay_ratio
        self.pos_conv = ConvPositionalEmbedding(
            cfg.encoder_embed_dim, cfg.conv_pos, cfg.conv_pos_groups, rngs=rngs)
        self.layer_norm = layer_norm(cfg.encoder_embed_dim, rngs=rngs)
        self.dropout = _dropout(cfg.dropout, rngs)
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
        x = _drop(self.dropout, x)
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
        self.dropout_input = _dropout(cfg.dropout_input, rngs)
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
        return _drop(self.dropout_input, x)

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
