"""Building blocks shared by the ViT and BEATs modules: partitioned init,
Linear and LayerNorm with float32 parameters and logical axis names, and
per-layer rematerialisation."""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

Init = jax.nn.initializers.Initializer
XAVIER_UNIFORM = nnx.initializers.xavier_uniform()
TORCH_LINEAR = jax.nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")  # U(+-1/sqrt(fan_in))


def partitioned(init: Init, names: Sequence[str | None]) -> Init:
    """`nnx.with_partitioning` that shards eagerly only when a mesh is set.

    Without a mesh (tests, inference) the logical names stay as metadata;
    the trainer maps them to mesh axes itself (training/sharding.py).
    """
    if jax.sharding.get_abstract_mesh().empty:
        return nnx.with_partitioning(init, tuple(names), eager_sharding=False)
    return nnx.with_partitioning(init, tuple(names))


def linear(din: int, dout: int, names: tuple, *, init: Init, dtype, rngs: nnx.Rngs,
           use_bias: bool = True) -> nnx.Linear:
    """Linear with float32 parameters, `init` kernel, zero bias."""
    return nnx.Linear(
        din, dout, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
        kernel_init=partitioned(init, names),
        bias_init=partitioned(nnx.initializers.zeros_init(), names[1:]),
        rngs=rngs)


def layer_norm(dim: int, *, eps: float, rngs: nnx.Rngs) -> nnx.LayerNorm:
    """float32 LayerNorm with two-pass variance (as torch)."""
    return nnx.LayerNorm(
        dim, epsilon=eps, dtype=jnp.float32, param_dtype=jnp.float32,
        use_fast_variance=False,
        scale_init=partitioned(nnx.initializers.ones_init(), ("norm",)),
        bias_init=partitioned(nnx.initializers.zeros_init(), ("norm",)),
        rngs=rngs)


@jax.custom_vjp
def materialize_grad(x: jax.Array) -> jax.Array:
    """Identity whose incoming gradient XLA computes once instead of per consumer.

    In a residual stack the gradient of the residual stream is a chain of
    cheap adds (LayerNorm backward plus the skip) through every later block.
    XLA:CPU fuses that whole chain into each consumer that needs a transposed
    copy for a weight gradient, recomputing it per consumer: 14-18 % of a
    ViT-B MATPAC step (docs/BENCHMARKS.md). The backward here returns
    `g / (1 + 0 * g)`, which equals `g` exactly for finite values; XLA does not
    duplicate a divide into consumers, so the chain is cut at every call.
    """
    return x


def _materialize_grad_fwd(x):
    return x, None


def _materialize_grad_bwd(_, g):
    return (g / (1.0 + 0.0 * g),)


materialize_grad.defvjp(_materialize_grad_fwd, _materialize_grad_bwd)


# What each transformer layer keeps for the backward pass (`config.model.remat`).
REMAT_POLICIES = {
    "none": None,  # keep every activation: fastest, most memory
    "full": jax.checkpoint_policies.nothing_saveable,  # keep layer inputs only
    # keep the Linear outputs; recompute norms, activations and attention
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def check_remat(remat: str) -> None:
    if remat not in REMAT_POLICIES:
        raise ValueError(f"config.model.remat={remat!r}; known: {sorted(REMAT_POLICIES)}")


def call_layer(layer: nnx.Module, *args, remat: str = "none"):
    """`layer(*args)`, its activations rematerialised in the backward pass as
    `REMAT_POLICIES[remat]` says: same values and gradients, less activation
    memory where the backend keeps the recomputation (GPU, TPU; docs/BENCHMARKS.md)."""
    if remat == "none":
        return layer(*args)
    return nnx.remat(lambda m, *a: m(*a), policy=REMAT_POLICIES[remat])(layer, *args)


def set_remat(model: nnx.Module, remat: str) -> None:
    """Set the remat policy of every layer stack in `model` (they read `.remat`)."""
    check_remat(remat)
    for _, module in nnx.iter_modules(model):
        if hasattr(module, "remat"):
            module.remat = remat
