"""BEATs' building blocks (docs/SPEC.md section 8), Flax NNX: the config, the
conv positional embedding, self-attention with the gated relative position
bias, and the post-LN DeepNorm layer. models/beats.py stacks them into the
encoder. Numerically the same as microsoft/unilm `beats/` (see beats.py).
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


def dropout(rate: float, rngs: nnx.Rngs) -> nnx.Dropout | None:
    """No module (and no RNG state) when the rate is 0."""
    return nnx.Dropout(rate, rngs=rngs) if rate > 0 else None


def drop(layer: nnx.Dropout | None, x: jax.Array) -> jax.Array:
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
        _activation(cfg.activation_fn)  # refuses a name it does not know
        self.act_name = cfg.activation_fn
        self.activations = "float32"  # layers.set_activations
        self.self_attn = MultiheadAttention(cfg, has_bias_table=has_bias_table, dtype=dtype, rngs=rngs)
        self.self_attn_layer_norm = layer_norm(d, rngs=rngs)
        init = (xavier_normal((8 * cfg.encoder_layers) ** -0.25) if cfg.deep_norm
                else nnx.initializers.normal(0.02))
        self.fc1 = linear(d, f, ("embed", "mlp"), init=init, dtype=dtype, rngs=rngs)
        self.fc2 = linear(f, d, ("mlp", "embed"), init=init, dtype=dtype, rngs=rngs)
        self.final_layer_norm = layer_norm(d, rngs=rngs)
        self.dropout1 = dropout(cfg.dropout, rngs)
        self.dropout2 = dropout(cfg.activation_dropout, rngs)
        self.dropout3 = dropout(cfg.dropout, rngs)

    def _ffn(self, x: jax.Array) -> jax.Array:
        h = self.fc1(x)
        h = (layers.gelu(h, self.activations) if self.act_name == "gelu"
             else _activation(self.act_name)(h))
        return drop(self.dropout3, self.fc2(drop(self.dropout2, h))).astype(x.dtype)

    def __call__(self, x: jax.Array, pos_bias: jax.Array | None) -> jax.Array:
        if self.layer_norm_first:
            x = x + drop(self.dropout1, self.self_attn(self.self_attn_layer_norm(x), pos_bias)
                          ).astype(x.dtype)
            return x + self._ffn(self.final_layer_norm(x))
        a = drop(self.dropout1, self.self_attn(x, pos_bias)).astype(x.dtype)
        x = self.self_attn_layer_norm(x * self.alpha + a)
        return self.final_layer_norm(x * self.alpha + self._ffn(x))
