"""`config.model.activation_dtype`: float32 (the default) is flax's LayerNorm
and jax's GELU, unchanged; bfloat16 keeps the residual stream in bfloat16 and
switches to `fused_layer_norm` / `fused_gelu`, same maths with gradients
that keep only their inputs."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from matpac_jax import errors
from matpac_jax.models import layers, vit
from matpac_jax.training import step as step_lib


def test_fused_layer_norm_is_layer_norm_with_its_gradients():
    x = 3.0 + jax.random.normal(jax.random.key(0), (4, 7, 48))
    ln = layers.layer_norm(48, eps=1e-6, rngs=nnx.Rngs(0))
    ln.scale.set_value(jax.random.normal(jax.random.key(1), (48,)))
    ln.bias.set_value(jax.random.normal(jax.random.key(2), (48,)))
    w = jax.random.normal(jax.random.key(3), x.shape)

    def loss(fn):
        return jax.value_and_grad(lambda x, s, b: jnp.sum(fn(x, s, b) * w), (0, 1, 2))

    def flax_ln(x, s, b):  # two-pass variance, as flax with use_fast_variance=False
        mean = x.mean(-1, keepdims=True)
        return (x - mean) / jnp.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + 1e-6) * s + b

    np.testing.assert_allclose(ln(x), flax_ln(x, ln.scale[...], ln.bias[...]), rtol=1e-5,
                               atol=1e-6)

    fused = lambda x, s, b: layers.fused_layer_norm(x, s, b, 1e-6, jnp.float32)
    (la, ga), (lb, gb) = loss(flax_ln)(x, ln.scale[...], ln.bias[...]), loss(fused)(
        x, ln.scale[...], ln.bias[...])
    np.testing.assert_allclose(lb, la, rtol=1e-5)
    for a, b in zip(ga, gb):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)
    # bfloat16 output: the float32 result rounded once.
    y16 = layers.fused_layer_norm(x.astype(jnp.bfloat16), ln.scale[...], ln.bias[...], 1e-6,
                                  jnp.bfloat16)
    assert y16.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(y16, np.float32),
                               np.asarray(fused(x.astype(jnp.bfloat16).astype(jnp.float32),
                                                ln.scale[...], ln.bias[...])), rtol=1e-2,
                               atol=1e-2)


def test_fused_gelu_has_jax_values_and_gradient():
    x = jnp.linspace(-8.0, 8.0, 1001)
    np.testing.assert_array_equal(layers.fused_gelu(x), jax.nn.gelu(x, approximate=False))
    grad = jax.vmap(jax.grad(lambda v: jax.nn.gelu(v, approximate=False)))(x)
    np.testing.assert_allclose(jax.vmap(jax.grad(layers.fused_gelu))(x), grad, rtol=1e-5,
                               atol=1e-6)
    assert layers.gelu(x, "float32") is not None and jnp.array_equal(
        layers.gelu(x, "bfloat16"), layers.fused_gelu(x))


def test_float32_activations_are_flax_layer_norm_exactly():
    x = jax.random.normal(jax.random.key(0), (2, 5, 32))
    ln = layers.layer_norm(32, eps=1e-6, rngs=nnx.Rngs(0))
    ref = nnx.LayerNorm(32, epsilon=1e-6, use_fast_variance=False, rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(ln(x), ref(x))


def test_bfloat16_activations_keep_a_bfloat16_residual_stream():
    stack = vit.TransformerStack(128, 2, 4, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (2, 9, 128))
    ref = stack(x)
    layers.set_activations(stack, "bfloat16")
    assert {m.activations for _, m in nnx.iter_modules(stack) if hasattr(m, "activations")} == {
        "bfloat16"}
    y = stack(x)
    assert ref.dtype == jnp.float32 and y.dtype == jnp.bfloat16
    rel = float(jnp.linalg.norm(y.astype(jnp.float32) - ref) / jnp.linalg.norm(ref))
    assert rel < 2e-2
    with pytest.raises(ValueError, match="activation_dtype='float8'"):
        layers.set_activations(stack, "float8")


def test_activation_dtype_is_checked_before_compilation():
    from test_training import tiny_config

    config = tiny_config("unused")
    config.model.activation_dtype = "float8"
    with pytest.raises(errors.ConfigError, match="model.activation_dtype='float8'"):
        step_lib.validate(config)
