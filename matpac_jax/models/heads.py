"""DINO-style classification head of MATPAC (docs/SPEC.md section 4)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from matpac_jax.models.layers import (
    XAVIER_UNIFORM, Init, gelu, l2_normalize, linear, partitioned)


class DinoHead(nnx.Module):
    """Linear-GELU-Linear-GELU-Linear, L2-normalise, weight-normed Linear (no bias).

    The last layer keeps weight norm's two parts: `last_v` (bottleneck, K) and
    `last_g` (K,), W = g * v / ||v|| per output unit, both trainable (the
    official head trains g; DINO's option to freeze it is not used).
    `mlp_init` is the kernel init of the three MLP layers (the student's
    xavier-uniform; the official teacher head keeps N(0, 0.02), see
    `models.masked_latent.Teacher`).
    """

    def __init__(self, in_dim: int, out_dim: int = 2048, hidden_dim: int = 2048,
                 bottleneck_dim: int = 256, *, mlp_init: Init = XAVIER_UNIFORM,
                 dtype=jnp.float32, rngs: nnx.Rngs):
        mk = lambda din, dout, names: linear(din, dout, names, init=mlp_init, dtype=dtype,
                                             rngs=rngs)
        self.fc1 = mk(in_dim, hidden_dim, ("embed", "mlp"))
        self.fc2 = mk(hidden_dim, hidden_dim, (None, "mlp"))
        self.fc3 = mk(hidden_dim, bottleneck_dim, ("mlp", None))
        # torch nn.Linear default init for v (its direction is all that matters).
        bound = bottleneck_dim ** -0.5
        v_init = lambda key, shape, dtype=jnp.float32: jax.random.uniform(
            key, shape, dtype, -bound, bound)
        self.last_v = nnx.Param(partitioned(v_init, (None, "vocab"))(
            rngs.params(), (bottleneck_dim, out_dim)))
        self.last_g = nnx.Param(partitioned(nnx.initializers.ones_init(), ("vocab",))(
            rngs.params(), (out_dim,)))
        self.dtype = dtype
        self.activations = "float32"  # layers.set_activations: fused_gelu when not float32

    def __call__(self, x: jax.Array) -> jax.Array:
        """(..., in_dim) -> (..., K) float32 logits."""
        x = gelu(self.fc1(x), self.activations)
        x = gelu(self.fc2(x), self.activations)
        x = l2_normalize(self.fc3(x).astype(jnp.float32))
        v = self.last_v[...]
        w = self.last_g[...] * v / jnp.sqrt(jnp.sum(jnp.square(v), axis=0, keepdims=True))
        return jnp.dot(x.astype(self.dtype), w.astype(self.dtype),
                       preferred_element_type=jnp.float32)


class HypothesisHeads(nnx.Module):
    """MATPAC++'s K prediction heads (docs/SPEC.md section 11): K independent
    `Linear(pred_dim, dim)` (xavier-uniform, zero bias, as the official
    `mcl_heads`), stored as one (K, in, out) kernel so they run as one einsum.
    Replaces the predictor's single output Linear."""

    def __init__(self, in_dim: int, out_dim: int, num: int, *, dtype=jnp.float32,
                 rngs: nnx.Rngs):
        if num < 2:
            raise ValueError(f"MCL needs at least 2 hypothesis heads, got {num}")
        head_init = lambda key, shape, dt=jnp.float32: jax.vmap(
            lambda k: XAVIER_UNIFORM(k, shape[1:], dt))(jax.random.split(key, shape[0]))
        self.kernel = nnx.Param(partitioned(head_init, (None, None, "embed"))(
            rngs.params(), (num, in_dim, out_dim)))
        self.bias = nnx.Param(partitioned(nnx.initializers.zeros_init(), (None, "embed"))(
            rngs.params(), (num, out_dim)))
        self.num, self.dtype = num, dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        """(B, n, in_dim) -> (B, n, K, out_dim)."""
        y = jnp.einsum("bni,kio->bnko", x.astype(self.dtype), self.kernel[...].astype(self.dtype),
                       preferred_element_type=jnp.float32)
        return (y + self.bias[...]).astype(self.dtype)
