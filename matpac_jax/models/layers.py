"""Building blocks shared by every model: partitioned init, Linear and
LayerNorm with float32 parameters and logical axis names, the `Buffer`
variable kind, attention (XLA or cuDNN), per-layer rematerialisation and the
XLA:CPU workaround switch."""
from __future__ import annotations

import contextlib
import contextvars
import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

Init = jax.nn.initializers.Initializer
XAVIER_UNIFORM = nnx.initializers.xavier_uniform()
TORCH_LINEAR = jax.nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")  # U(+-1/sqrt(fan_in))
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


class Buffer(nnx.Variable):
    """Non-trainable state that a loss or method hook updates and checkpoints
    keep (MATPAC's center). Never differentiated, never seen by the optimiser."""


def dtype(name: str):
    """Compute dtype from its config name (`config.model.dtype`)."""
    if name not in DTYPES:
        raise ValueError(f"config.model.dtype={name!r}; known: {sorted(DTYPES)}")
    return DTYPES[name]


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
    """torch F.normalize: x / max(||x||, eps)."""
    n = jnp.sqrt(jnp.sum(jnp.square(x), axis=axis, keepdims=True))
    return x / jnp.maximum(n, eps)


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


def xavier_linear(din: int, dout: int, names: tuple, *, dtype, rngs: nnx.Rngs,
                  use_bias: bool = True) -> nnx.Linear:
    """Xavier-uniform Linear, zero bias (the M2D/MATPAC init)."""
    return linear(din, dout, names, init=XAVIER_UNIFORM, dtype=dtype, rngs=rngs,
                  use_bias=use_bias)


# What the layer stacks keep between layers (`config.model.activation_dtype`):
# 'float32' (the residual stream, layer norms and their outputs in float32:
# what the trajectory tests check), or 'bfloat16' / 'float16': the residual
# stream and every layer's output in that dtype, layer norm statistics still
# in float32, and layer norm and GELU with gradients that keep only their
# input (`fused_layer_norm`, `fused_gelu`), so XLA recomputes the rest
# inside the matmuls that read them (docs/SCALING.md: ~25 % less memory
# traffic per ViT block on TPU).
ACTIVATION_DTYPES = ("float32", "bfloat16", "float16")


class LayerNorm(nnx.LayerNorm):
    """nnx.LayerNorm under the 'layer_norm' name scope (plan's traffic report
    finds it there). `activations` (`set_activations`) other than float32
    switch to `fused_layer_norm` with that output dtype; float32 runs flax's
    (two-pass variance, as torch), unchanged."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.activations = "float32"

    def __call__(self, x: jax.Array, *, mask=None) -> jax.Array:
        with jax.named_scope("layer_norm"):
            if self.activations == "float32":
                return super().__call__(x, mask=mask)
            return fused_layer_norm(x, self.scale[...], self.bias[...], self.epsilon,
                                    dtype(self.activations))


def layer_norm(dim: int, *, eps: float, rngs: nnx.Rngs) -> LayerNorm:
    """float32 LayerNorm with two-pass variance (as torch)."""
    return LayerNorm(
        dim, epsilon=eps, dtype=jnp.float32, param_dtype=jnp.float32,
        use_fast_variance=False,
        scale_init=partitioned(nnx.initializers.ones_init(), ("norm",)),
        bias_init=partitioned(nnx.initializers.zeros_init(), ("norm",)),
        rngs=rngs)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def fused_layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float,
                     out_dtype) -> jax.Array:
    """LayerNorm over the last axis, statistics in float32 from one pass
    (E[x], E[x^2], as flax's fast variance), output in `out_dtype`. Its
    gradient keeps x and the per-row statistics only: autodiff's keeps
    normalised copies that XLA writes to and reads from HBM."""
    return _layer_norm_fwd(x, scale, bias, eps, out_dtype)[0]


def _stats(x, eps):
    xf = x.astype(jnp.float32)
    mean = jnp.mean(xf, axis=-1, keepdims=True)
    var = jnp.maximum(jnp.mean(xf * xf, axis=-1, keepdims=True) - mean * mean, 0.0)
    return xf, mean, jax.lax.rsqrt(var + eps)


def _layer_norm_fwd(x, scale, bias, eps, out_dtype):
    xf, mean, rstd = _stats(x, eps)
    y = ((xf - mean) * rstd * scale + bias).astype(out_dtype)
    return y, (x, scale, mean, rstd)


def _layer_norm_bwd(eps, out_dtype, res, g):
    x, scale, mean, rstd = res
    g = g.astype(jnp.float32)
    xhat = (x.astype(jnp.float32) - mean) * rstd
    rows = tuple(range(g.ndim - 1))
    gx = g * scale
    dx = rstd * (gx - jnp.mean(gx, axis=-1, keepdims=True)
                 - xhat * jnp.mean(gx * xhat, axis=-1, keepdims=True))
    return dx.astype(x.dtype), jnp.sum(g * xhat, axis=rows), jnp.sum(g, axis=rows)


fused_layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


@jax.custom_vjp
def fused_gelu(x: jax.Array) -> jax.Array:
    """`jax.nn.gelu(x, approximate=False)` (same values) whose gradient keeps
    x only: autodiff's keeps the erf term too, a second array of the MLP's
    width written and read per layer."""
    return jax.nn.gelu(x, approximate=False)


def _gelu_fwd(x):
    return fused_gelu(x), x


def _gelu_bwd(x, g):
    xf = x.astype(jnp.float32)
    slope = (0.5 * (1.0 + jax.lax.erf(xf * (2 ** -0.5)))
             + xf * jnp.exp(-0.5 * xf * xf) * (2 * math.pi) ** -0.5)
    return ((g.astype(jnp.float32) * slope).astype(x.dtype),)


fused_gelu.defvjp(_gelu_fwd, _gelu_bwd)


def gelu(x: jax.Array, activations: str = "float32") -> jax.Array:
    """Exact (erf) GELU; `fused_gelu` when activations are not float32."""
    if activations == "float32":
        return jax.nn.gelu(x, approximate=False)
    return fused_gelu(x)


def set_activations(model: nnx.Module, activation_dtype: str) -> None:
    """Set what every layer stack, layer norm and MLP keeps between layers
    (`ACTIVATION_DTYPES`; modules that read it have `.activations`)."""
    if activation_dtype not in ACTIVATION_DTYPES:
        raise ValueError(f"config.model.activation_dtype={activation_dtype!r}; known: "
                         f"{ACTIVATION_DTYPES}")
    for _, module in nnx.iter_modules(model):
        if hasattr(module, "activations"):
            module.activations = activation_dtype


@jax.custom_vjp
def materialize_grad(x: jax.Array) -> jax.Array:
    """Identity whose incoming gradient XLA computes once instead of per consumer.

    An XLA:CPU workaround (`set_cpu_workarounds`). In a residual stack the
    gradient of the residual stream is a chain of cheap adds (LayerNorm
    backward plus the skip) through every later block; XLA:CPU fuses that
    whole chain into each consumer that needs a transposed copy for a weight
    gradient, recomputing it per consumer (docs/BENCHMARKS.md). The backward
    here returns `g / (1 + 0 * g)`, which equals `g` exactly for finite
    values; XLA does not duplicate a divide into consumers, so the chain is
    cut at every call.
    """
    return x


def _materialize_grad_fwd(x):
    return x, None


def _materialize_grad_bwd(_, g):
    return (g / (1.0 + 0.0 * g),)


materialize_grad.defvjp(_materialize_grad_fwd, _materialize_grad_bwd)


# Who computes softmax(q.k / sqrt(d) + bias) v (`config.model.attention`):
# 'xla' the plain einsum-softmax-einsum graph (every backend; logits and
# softmax in float32), 'cudnn' cuDNN's fused flash attention (NVIDIA GPUs,
# bfloat16 / float16 only), 'pallas' our TPU kernels whose scores stay in
# VMEM (models/attention_kernel.py; Pallas' interpreter on CPU, for tests).
# Same maths; tests compare them where both run.
ATTENTION = ("xla", "cudnn", "pallas")


def check_attention(implementation: str, platform: str | None = None,
                    compute_dtype: str | None = None) -> None:
    """Reject an attention implementation the devices or the dtype cannot run."""
    if implementation not in ATTENTION:
        raise ValueError(f"config.model.attention={implementation!r}; known: {ATTENTION}")
    platform = platform or jax.default_backend()
    if implementation == "pallas" and platform not in ("tpu", "cpu"):
        raise ValueError(f"config.model.attention='pallas' runs on TPUs (and interpreted on "
                         f"CPUs); the mesh's devices are {platform!r}: use 'xla' or 'cudnn'")
    if implementation != "cudnn":
        return
    if platform not in ("gpu", "cuda"):
        raise ValueError(
            f"config.model.attention='cudnn' needs NVIDIA GPUs (cuDNN flash attention); "
            f"the mesh's devices are {platform!r}: use 'xla'")
    if compute_dtype is not None and compute_dtype not in ("bfloat16", "float16"):
        raise ValueError(
            f"config.model.attention='cudnn' runs in bfloat16 or float16 only; "
            f"config.model.dtype={compute_dtype!r}: use 'xla' or a half-precision dtype")


_BATCH_AXES: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar(
    "batch_axes", default=())


@contextlib.contextmanager
def batch_axes(axes: Sequence[str]):
    """While tracing under a mesh: the mesh axes that split the batch
    (training/step.py sets them), for `batch_parallel`."""
    token = _BATCH_AXES.set(tuple(axes))
    try:
        yield
    finally:
        _BATCH_AXES.reset(token)


def batch_parallel(fn, args, batched, summed=()):
    """`fn(*args)` (a list of results), run by each device on its share of
    the batch when the caller traces under a mesh and `batch_axes` (the
    training step sets both): for kernels XLA's partitioner cannot split by
    itself (Pallas calls, cuDNN attention with a per-example bias). `batched`
    says which arguments, then which results, have the batch as their first
    axis (the others are whole on every device); results in `summed` are
    sums over the batch."""
    mesh = jax.sharding.get_abstract_mesh()
    axes = tuple(a for a in _BATCH_AXES.get() if not mesh.empty and a in mesh.axis_names)
    if not axes or mesh.size == 1:
        return fn(*args)
    spec = lambda b: jax.sharding.PartitionSpec(axes) if b else jax.sharding.PartitionSpec()

    def local(*a):
        return [jax.lax.psum(o, axes) if i in summed else o for i, o in enumerate(fn(*a))]

    return jax.shard_map(local, mesh=mesh, in_specs=tuple(spec(b) for b in batched[:len(args)]),
                         out_specs=[spec(b) for b in batched[len(args):]],
                         check_vma=False)(*args)


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, *,
                          bias: jax.Array | None = None, mask: jax.Array | None = None,
                          implementation: str = "xla") -> jax.Array:
    """(B, n, H, d) q, k, v -> (B, n, H, d); `bias` (B|1, H, n, n) added to the
    logits, `mask` (B|1, 1|H, n, n) bool, False hidden. One call site for every
    model, so `config.model.attention` (`set_attention`) switches all of them.

    cuDNN's training kernels take even sequence lengths only (jax 0.10 raises
    "Unsupported sequence length" at trace time for odd ones, e.g. MATPAC's
    191-token predictor input): those calls run on inputs padded by one token,
    the pad hidden from every query by the key length, and the pad's output
    row dropped (`padded_attention`). Under a mesh, cuDNN calls run per device
    on its share of the batch: jax's partitioning of the call all-gathers a
    per-example bias (BEATs: 3.2 GB per step on 8 GPUs, docs/SCALING.md)."""
    if implementation != "cudnn":
        return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask,
                                            implementation=implementation)
    extra = [a for a in (bias, mask) if a is not None]

    def local(q, k, v, *rest):
        rest = iter(rest)
        b = next(rest) if bias is not None else None
        m = next(rest) if mask is not None else None
        if q.shape[1] % 2 or k.shape[1] % 2:
            return [padded_attention(q, k, v, bias=b, mask=m, implementation=implementation)]
        return [jax.nn.dot_product_attention(q, k, v, bias=b, mask=m,
                                             implementation=implementation)]

    batched = (True, True, True, *(a.shape[0] > 1 for a in extra), True)
    return batch_parallel(local, (q, k, v, *extra), batched)[0]


def padded_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, bias=None, mask=None,
                     implementation: str = "cudnn", multiple: int = 2) -> jax.Array:
    """`dot_product_attention` over sequences padded to a multiple of `multiple`:
    padded keys are excluded by `key_value_seq_lengths`, padded query rows
    are computed and cut off. Same result as without padding."""
    n, s = q.shape[1], k.shape[1]
    pn, ps = -n % multiple, -s % multiple
    pad = lambda x, p: jnp.pad(x, [(0, 0), (0, p)] + [(0, 0)] * (x.ndim - 2))
    q, k, v = pad(q, pn), pad(k, ps), pad(v, ps)
    if bias is not None:
        bias = jnp.pad(bias, [(0, 0)] * (bias.ndim - 2) + [(0, pn), (0, ps)])
    if mask is not None:  # the pad's keys are hidden by the lengths below
        mask = jnp.pad(mask, [(0, 0)] * (mask.ndim - 2) + [(0, pn), (0, ps)],
                       constant_values=True)
    batch = q.shape[0]
    out = jax.nn.dot_product_attention(
        q, k, v, bias=bias, mask=mask, implementation=implementation,
        query_seq_lengths=jnp.full((batch,), n, jnp.int32),
        key_value_seq_lengths=jnp.full((batch,), s, jnp.int32))
    return out[:, :n]


def project(x: jax.Array, kernel: jax.Array, bias: jax.Array | None, dtype) -> jax.Array:
    """`x @ kernel + bias` in `dtype`, as `nnx.Linear` computes it (for a
    kernel assembled from Linear parameters, e.g. `attention_kernel.group_qkv`)."""
    y = jnp.dot(x.astype(dtype), kernel.astype(dtype))
    return y if bias is None else y + bias.astype(dtype)


def set_attention(model: nnx.Module, implementation: str) -> None:
    """Set the attention implementation of every attention module (`.attention`)."""
    if implementation not in ATTENTION:
        raise ValueError(f"config.model.attention={implementation!r}; known: {ATTENTION}")
    for _, module in nnx.iter_modules(model):
        if hasattr(module, "attention"):
            module.attention = implementation


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


# Code paths that only exist because of how XLA:CPU compiles a step; the
# maths is the same either way (tests check the gradients match). The list,
# with measurements, is in docs/ARCHITECTURE.md.
CPU_WORKAROUNDS = ("auto", "on", "off")


def cpu_workarounds_enabled(setting: str, backend: str | None = None) -> bool:
    """`config.model.cpu_workarounds`: 'auto' turns them on for the CPU backend only."""
    if setting not in CPU_WORKAROUNDS:
        raise ValueError(f"config.model.cpu_workarounds={setting!r}; known: {CPU_WORKAROUNDS}")
    if setting == "auto":
        return (backend or jax.default_backend()) == "cpu"
    return setting == "on"


def set_cpu_workarounds(model: nnx.Module, enabled: bool) -> None:
    """Switch every module that has an XLA:CPU workaround (`.cpu_workaround`)."""
    for _, module in nnx.iter_modules(model):
        if hasattr(module, "cpu_workaround"):
            module.cpu_workaround = bool(enabled)
