"""Attention as TPU kernels (Pallas) whose score matrices never leave the
chip's VMEM (`config.model.attention='pallas'`).

Our sequences are short (MATPAC/M2D: 58 visible, 134 masked, 191 predictor
tokens; BEATs: 124 kept, 496 predictor patches), so one example's scores for
one head (at most 496 x 496 float32, 1 MB) fit VMEM whole: a grid step takes
one example and one group of heads 128 lanes wide (2 heads of 64, 4 of 32),
runs a plain (not online) softmax per head and writes their outputs. HBM
sees q, k, v and the output, nothing of size n x n, where the XLA path writes
and re-reads float32 logits and probabilities per layer (docs/SCALING.md: 44
% of MATPAC's step traffic). The backward kernel recomputes the scores from
q and k and writes dq | dk | dv.

The kernels take q, k and v as one array whose last axis is grouped per
head group, `[q_g | k_g | v_g]` for g = 0, 1, ... (`group_qkv` reorders the
columns of a q | k | v projection to that order), so one block of 3 x 128
lanes holds everything a grid step needs and the projection is one matmul.

The maths is the XLA path's (`jax.nn.dot_product_attention`): logits
`q.k * d**-0.5` accumulated in float32, plus the bias rounded to the input
dtype, softmax in float32, probabilities cast to the input dtype for the
product with v (the backward keeps d(probabilities) in float32 where the XLA
path rounds it to the input dtype). BEATs' gated relative position bias
enters as its two factors, `gate` (B, H, n) and `pos` (B|1, H, n, n),
multiplied in VMEM, so the per-example gated bias of a layer is never
written either. On CPU (tests) the kernels run in Pallas' interpreter.

The cost estimate given to XLA is the attention maths of the XLA path
(forward 4 n^2 d per head and example, backward 8; the backward's
recomputation of the scores is not model work) and the bytes of the
operands and results, so XLA's FLOPs and `hlo_stats` count the kernels.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from matpac_jax.models import layers

KIND = "matpac_attention"  # the kernels' `metadata` tag
LANES = 128


def heads_per_group(heads: int, head_dim: int) -> int:
    """Heads whose q (or k, v) columns fill whole 128-lane tiles together (all
    of them when they are narrower together)."""
    if head_dim % LANES == 0:
        return 1
    if heads * head_dim <= LANES:
        return heads
    if LANES % head_dim or heads % (LANES // head_dim):
        raise ValueError(f"{heads} heads of width {head_dim} do not fill 128-lane groups")
    return LANES // head_dim


def group_qkv(x: jax.Array, heads: int) -> jax.Array:
    """Last axis q | k | v (each head-major, H x d) -> per head group
    [q_g | k_g | v_g]: the layout `attention` takes (works on a projection's
    kernel (in, 3 H d), its bias, or its output)."""
    hd = x.shape[-1] // 3
    groups = heads // heads_per_group(heads, hd // heads)
    y = x.reshape(*x.shape[:-1], 3, groups, hd // groups)
    return jnp.swapaxes(y, -3, -2).reshape(x.shape)


def _scores(q, k, scale, bias):
    s = jax.lax.dot_general(q, k, (((1,), (1,)), ((), ())),
                            preferred_element_type=jnp.float32) * scale
    if bias is not None:
        s = s + bias.astype(q.dtype).astype(jnp.float32)
    m = jnp.max(s, axis=-1, keepdims=True)
    e = jnp.exp(s - m)
    return e / jnp.sum(e, axis=-1, keepdims=True)


def _heads(qkv, group: int):
    """A block's (n, 3 x group x d) -> per head (q, k, v), each (n, d)."""
    w = qkv.shape[-1] // 3
    d = w // group
    return [tuple(qkv[:, j * w + h * d:j * w + (h + 1) * d] for j in range(3))
            for h in range(group)]


def _forward_kernel(*refs, group: int, scale: float, biased: bool):
    qkv_ref, b_ref, *rest = refs
    gate_ref, pos_ref, o_ref = rest if biased else (None, None, rest[0])
    outs = []
    for h, (q, k, v) in enumerate(_heads(qkv_ref[0] + b_ref[...], group)):
        bias = gate_ref[0, 0, h][:, None] * pos_ref[0, 0, h] if biased else None
        p = _scores(q, k, scale, bias)
        outs.append(jnp.dot(p.astype(v.dtype), v, preferred_element_type=jnp.float32))
    o_ref[0] = jnp.concatenate(outs, axis=-1).astype(o_ref.dtype)


def _backward_kernel(*refs, group: int, scale: float, biased: bool, shared_pos: bool):
    if biased:
        qkv_ref, b_ref, gate_ref, pos_ref, do_ref, dqkv_ref, db_ref, dgate_ref, dpos_ref = refs
        if shared_pos:  # one (group, n, n) gradient per head group, summed over the batch
            @pl.when(pl.program_id(1) == 0)
            def _():
                dpos_ref[...] = jnp.zeros_like(dpos_ref)
    else:
        qkv_ref, b_ref, do_ref, dqkv_ref, db_ref = refs
    do = do_ref[0]
    d = do.shape[-1] // group
    grads = [], [], []
    dgate = []
    for h, (q, k, v) in enumerate(_heads(qkv_ref[0] + b_ref[...], group)):
        gate = gate_ref[0, 0, h][:, None] if biased else None
        p = _scores(q, k, scale, gate * pos_ref[0, 0, h] if biased else None)
        g = do[:, h * d:(h + 1) * d]
        dp = jax.lax.dot_general(g, v, (((1,), (1,)), ((), ())),
                                 preferred_element_type=jnp.float32)
        ds = p * (dp - jnp.sum(p * dp, axis=-1, keepdims=True))  # d logits
        dsb = ds.astype(q.dtype)
        t = (((0,), (0,)), ((), ()))  # contract the first axes: a^T b
        grads[0].append(jnp.dot(dsb, k, preferred_element_type=jnp.float32) * scale)
        grads[1].append(jax.lax.dot_general(dsb, q, t, preferred_element_type=jnp.float32)
                        * scale)
        grads[2].append(jax.lax.dot_general(p.astype(g.dtype), g, t,
                                            preferred_element_type=jnp.float32))
        if biased:
            dgate.append(jnp.sum(ds * pos_ref[0, 0, h], axis=-1)[None])
            if shared_pos:
                dpos_ref[0, 0, h] += gate * ds
            else:
                dpos_ref[0, 0, h] = (gate * ds).astype(dpos_ref.dtype)
    dqkv = jnp.concatenate(grads[0] + grads[1] + grads[2], axis=-1)
    dqkv_ref[0] = dqkv.astype(dqkv_ref.dtype)
    db_ref[0] = jnp.sum(dqkv, axis=0, keepdims=True)  # this example's share of d(bias)
    if biased:
        dgate_ref[0, 0] = jnp.concatenate(dgate, axis=0)


def _on_tpu(call, args, batched, summed=()):
    """`call(interpret, *args)`: the Mosaic kernel where the program is
    lowered for TPUs (compile-only devices included), Pallas' interpreter
    elsewhere (CPU tests); each device runs it on its share of the batch
    (`layers.batch_parallel`: XLA cannot partition a kernel)."""
    run = lambda *a: jax.lax.platform_dependent(
        *a, tpu=functools.partial(call, False), default=functools.partial(call, True))
    return layers.batch_parallel(run, args, batched, summed)


class _Layout:
    """Block specs of one attention call: grid (head groups, batch)."""

    def __init__(self, qkv, heads: int, pos=None):
        self.b, self.n, three_hd = qkv.shape
        self.hd = three_hd // 3
        self.heads = heads
        self.group = heads_per_group(heads, self.hd // heads)
        self.groups = heads // self.group
        self.width = self.hd // self.groups  # lanes of q (k, v) per group
        self.shared_pos = pos is not None and pos.shape[0] == 1
        self.grid = (self.groups, self.b)
        self.scale = (self.hd // heads) ** -0.5

    def rows(self, width):
        return pl.BlockSpec((1, self.n, width), lambda g, i: (i, 0, g))

    def qkv_bias(self):  # the projection's bias (1, 3 H d)
        return pl.BlockSpec((1, 3 * self.width), lambda g, i: (0, g))

    def bias_grad(self):  # per example (B, 1, 3 H d)
        return pl.BlockSpec((1, 1, 3 * self.width), lambda g, i: (i, 0, g))

    def bias(self):  # gate (B, groups, group, n), pos (B|1, groups, group, n, n)
        return [pl.BlockSpec((1, 1, self.group, self.n), lambda g, i: (i, g, 0, 0)),
                pl.BlockSpec((1, 1, self.group, self.n, self.n),
                             lambda g, i: (0 if self.shared_pos else i, g, 0, 0, 0))]

    def cost(self, itemsize: int, passes: int, arrays: int):
        return pl.CostEstimate(flops=passes * self.b * self.n * self.n * self.hd,
                               transcendentals=self.b * self.heads * self.n * self.n,
                               bytes_accessed=arrays * self.b * self.n * self.hd * itemsize)


def _forward_call(heads, interpret, qkv, b, gate=None, pos=None):
    lay, biased = _Layout(qkv, heads, pos), gate is not None
    kernel = functools.partial(_forward_kernel, group=lay.group, scale=lay.scale,
                               biased=biased)
    return [pl.pallas_call(
        kernel, grid=lay.grid,
        in_specs=[lay.rows(3 * lay.width), lay.qkv_bias()] + (lay.bias() if biased else []),
        out_specs=lay.rows(lay.width),
        out_shape=jax.ShapeDtypeStruct((lay.b, lay.n, lay.hd), qkv.dtype),
        name="attention_fwd", cost_estimate=lay.cost(qkv.dtype.itemsize, 4, 4),
        metadata={"kind": KIND}, interpret=interpret)(qkv, b, *((gate, pos) if biased else ()))]


def _backward_call(heads, interpret, qkv, b, *rest):
    gate, pos, do = rest if len(rest) == 3 else (None, None, rest[0])
    lay, biased = _Layout(qkv, heads, pos), gate is not None
    kernel = functools.partial(_backward_kernel, group=lay.group, scale=lay.scale,
                               biased=biased, shared_pos=lay.shared_pos)
    out_shape = [jax.ShapeDtypeStruct(qkv.shape, qkv.dtype),
                 jax.ShapeDtypeStruct((lay.b, 1, 3 * lay.hd), jnp.float32)]
    if biased:
        out_shape += [jax.ShapeDtypeStruct(a.shape, jnp.float32) for a in (gate, pos)]
    # A position bias shared by the batch sums its gradient over the batch axis.
    semantics = ("parallel", "arbitrary" if lay.shared_pos else "parallel")
    bias = lay.bias() if biased else []
    return pl.pallas_call(
        kernel, grid=lay.grid,
        in_specs=[lay.rows(3 * lay.width), lay.qkv_bias()] + bias + [lay.rows(lay.width)],
        out_specs=[lay.rows(3 * lay.width), lay.bias_grad()] + bias,
        out_shape=out_shape, name="attention_bwd",
        cost_estimate=lay.cost(qkv.dtype.itemsize, 8, 8),
        compiler_params=pltpu.CompilerParams(dimension_semantics=semantics),
        metadata={"kind": KIND}, interpret=interpret)(qkv, b, *rest)


def _grouped_bias(qkv, heads, gate, pos):
    """gate (B, H, n), pos (B|1, H, n, n) split per head group, as the kernels take them."""
    lay = _Layout(qkv, heads)
    return (gate.reshape(gate.shape[0], lay.groups, lay.group, lay.n),
            pos.reshape(pos.shape[0], lay.groups, lay.group, lay.n, lay.n))


def _forward(qkv, b, gate, pos, heads: int):
    b = b.reshape(1, -1).astype(qkv.dtype)
    if gate is None:
        return _on_tpu(functools.partial(_forward_call, heads), (qkv, b),
                       (True, False, True))[0]
    g, p = _grouped_bias(qkv, heads, gate, pos)
    return _on_tpu(functools.partial(_forward_call, heads), (qkv, b, g, p),
                   (True, False, True, pos.shape[0] > 1, True))[0]


def _backward(qkv, b, gate, pos, do, heads: int):
    call = functools.partial(_backward_call, heads)
    b = b.reshape(1, -1).astype(qkv.dtype)
    if gate is None:
        dqkv, db = _on_tpu(call, (qkv, b, do), (True, False, True, True, True))
        return dqkv, db.sum((0, 1)), None, None
    g, p = _grouped_bias(qkv, heads, gate, pos)
    per = pos.shape[0] > 1
    dqkv, db, dg, dp = _on_tpu(call, (qkv, b, g, p, do),
                               (True, False, True, per, True, True, True, True, per),
                               summed=() if per else (3,))
    return dqkv, db.sum((0, 1)), dg.reshape(gate.shape), dp.reshape(pos.shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _attention(qkv, b, gate, pos, heads):
    return _forward(qkv, b, gate, pos, heads)


def _attention_fwd(qkv, b, gate, pos, heads):
    return _forward(qkv, b, gate, pos, heads), (qkv, b, gate, pos)


def _attention_bwd(heads, res, do):
    qkv, b, gate, pos = res
    dqkv, db, dgate, dpos = _backward(qkv, b, gate, pos, do.astype(qkv.dtype), heads)
    if gate is None:
        return dqkv, db.astype(b.dtype), None, None
    return dqkv, db.astype(b.dtype), dgate.astype(gate.dtype), dpos.astype(pos.dtype)


_attention.defvjp(_attention_fwd, _attention_bwd)


def attention(qkv: jax.Array, heads: int, bias: jax.Array | None = None,
              gate: jax.Array | None = None, pos: jax.Array | None = None) -> jax.Array:
    """softmax(q.k / sqrt(d) + bias) v for every head: (B, n, 3 H d) q | k | v
    in `group_qkv` order, plus the projection's `bias` (3 H d,) in the same
    order (added in the kernel, which also returns its gradient: no pass of
    its own over the rows) -> (B, n, H d), heads in order. `gate` (B, H, n)
    and `pos` (B|1, H, n, n) give the attention bias
    `gate[b, h, i] * pos[b, h, i, j]` (BEATs' gated relative position bias)."""
    if (gate is None) != (pos is None):
        raise ValueError("the attention bias needs both gate and pos")
    if qkv.shape[-1] % (3 * heads):
        raise ValueError(f"q|k|v width {qkv.shape[-1]} is not 3 x {heads} heads")
    if bias is None:
        bias = jnp.zeros(qkv.shape[-1:], qkv.dtype)
    return _attention(qkv, bias, gate, pos, heads)
