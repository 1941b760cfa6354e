"""`config.model.attention`: the 'xla' path is the attention maths of the
official code (softmax(q.k / sqrt(d) + bias) v, masked keys hidden), outputs
and gradients; 'cudnn' is refused where it cannot run, and matches 'xla' on a
GPU."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from matpac_jax.models import beats_layers, layers, vit
from matpac_jax.training import step as step_lib


def reference_attention(q, k, v, bias=None, mask=None):
    """The timm / fairseq formula written out, (B, n, H, d) layout."""
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
    if bias is not None:
        logits = logits + bias
    if mask is not None:
        logits = jnp.where(mask, logits, -jnp.inf)
    return jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, axis=-1), v)


def _outputs_and_grads(module, x, *args):
    def f(m, x):
        y = m(x, *args)
        return jnp.sum(y * jnp.cos(y)), y  # a loss whose gradient depends on every output

    grad = nnx.jit(nnx.value_and_grad(f, argnums=(0, 1), has_aux=True))
    (_, y), (g_params, g_x) = grad(module, x)
    return y, jax.tree.leaves(nnx.state(g_params)), g_x


def _assert_same(a, b):
    ya, ga, gxa = a
    yb, gb, gxb = b
    np.testing.assert_allclose(ya, yb, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gxa, gxb, rtol=1e-4, atol=1e-5)
    assert len(ga) == len(gb)
    for p, q in zip(ga, gb):
        np.testing.assert_allclose(p, q, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("masked", [False, True])
def test_vit_attention_xla_path_is_the_reference_formula(masked, monkeypatch):
    x = jax.random.normal(jax.random.key(0), (2, 9, 32))
    key_mask = jnp.arange(9)[None, :] < jnp.array([[9], [5]]) if masked else None
    attn = vit.Attention(32, 4, rngs=nnx.Rngs(0))
    ours = _outputs_and_grads(attn, x, key_mask)
    monkeypatch.setattr(vit, "dot_product_attention",
                        lambda q, k, v, mask=None, implementation=None:
                        reference_attention(q, k, v, mask=mask))
    _assert_same(ours, _outputs_and_grads(attn, x, key_mask))


def test_beats_attention_with_gated_bias_xla_path_is_the_reference_formula(monkeypatch):
    cfg = beats_layers.BEATsConfig(encoder_embed_dim=32, encoder_attention_heads=4, num_buckets=16,
                            max_distance=32, gru_rel_pos=True, relative_position_embedding=True)
    attn = beats_layers.MultiheadAttention(cfg, has_bias_table=True, dtype=jnp.float32,
                                    rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (2, 7, 32))
    bias = attn.compute_bias(jnp.array([[0, 2, 3, 5, 8, 9, 12]]))
    ours = _outputs_and_grads(attn, x, bias)
    monkeypatch.setattr(layers, "dot_product_attention",
                        lambda q, k, v, bias=None, implementation=None:
                        reference_attention(q, k, v, bias=bias))
    _assert_same(ours, _outputs_and_grads(attn, x, bias))


def test_set_attention_reaches_every_attention_module():
    model = vit.TransformerStack(16, 2, 2, rngs=nnx.Rngs(0))
    layers.set_attention(model, "cudnn")
    assert [m.attention for _, m in nnx.iter_modules(model) if hasattr(m, "attention")] == [
        "cudnn", "cudnn"]
    with pytest.raises(ValueError, match="config.model.attention='flash'"):
        layers.set_attention(model, "flash")


def _config(attention: str, dtype: str = "bfloat16"):
    from test_training import tiny_config

    config = tiny_config("unused")
    config.model.attention = attention
    config.model.dtype = dtype
    return config


def test_cudnn_is_refused_at_validate_time_off_gpu():
    if jax.default_backend() == "gpu":
        pytest.skip("this is the non-GPU check")
    with pytest.raises(ValueError, match="attention='cudnn' needs NVIDIA GPUs.*'cpu'"):
        step_lib.validate(_config("cudnn"))
    with pytest.raises(ValueError, match="config.model.attention='flash'"):
        step_lib.validate(_config("flash"))
    step_lib.validate(_config("xla"))
    with pytest.raises(ValueError, match="bfloat16 or float16 only"):
        layers.check_attention("cudnn", "gpu", "float32")


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN attention needs a GPU")
def test_cudnn_matches_xla_on_gpu():
    q, k, v = (jax.random.normal(jax.random.key(i), (2, 64, 4, 64), jnp.bfloat16)
               for i in range(3))
    bias = jax.random.normal(jax.random.key(3), (2, 4, 64, 64), jnp.bfloat16)

    def run(impl):
        f = lambda q, k, v, b: layers.dot_product_attention(
            q, k, v, bias=b, implementation=impl).astype(jnp.float32).sum()
        return jax.value_and_grad(f, argnums=(0, 1, 2, 3))(q, k, v, bias)

    (lx, gx), (lc, gc) = run("xla"), run("cudnn")
    np.testing.assert_allclose(float(lc), float(lx), rtol=2e-2)
    for a, b in zip(gc, gx):
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32),
                                   atol=5e-2, rtol=5e-2)


@pytest.mark.parametrize("with_bias,with_mask", [(False, False), (True, False), (False, True),
                                                 (True, True)])
def test_padded_attention_is_exact(with_bias, with_mask):
    """The odd-length path of 'cudnn' (pad by one, key length, cut the row) is
    run here through the XLA graph: the padding changes nothing, outputs or
    gradients (MATPAC's predictor input is 191 tokens)."""
    keys = jax.random.split(jax.random.key(0), 5)
    q, k, v = (jax.random.normal(keys[i], (2, 7, 3, 8)) for i in range(3))
    bias = jax.random.normal(keys[3], (1, 3, 7, 7)) if with_bias else None
    mask = (jax.random.bernoulli(keys[4], 0.7, (2, 1, 7, 7)).at[..., 0].set(True)
            if with_mask else None)

    def loss(fn, q, k, v):
        y = fn(q, k, v, bias=bias, mask=mask)
        return jnp.sum(y * jnp.cos(y)), y

    plain = lambda q, k, v, **kw: reference_attention(q, k, v, **kw)
    padded = lambda q, k, v, **kw: layers.padded_attention(q, k, v, implementation="xla",
                                                           multiple=4, **kw)
    (_, ya), ga = jax.value_and_grad(lambda *a: loss(plain, *a), (0, 1, 2), has_aux=True)(q, k, v)
    (_, yb), gb = jax.value_and_grad(lambda *a: loss(padded, *a), (0, 1, 2), has_aux=True)(q, k, v)
    np.testing.assert_allclose(yb, ya, rtol=1e-5, atol=1e-6)
    for a, b in zip(ga, gb):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_pallas_kernels_match_the_xla_path(dtype):
    """'pallas' (Pallas' interpreter on CPU, the TPU kernels' code) against
    'xla': the ViT attention (4 heads of 32, one 128-lane group) and BEATs'
    with its gated bias, per example (encoder) and shared (label predictor).
    In float32 they agree to rounding. In bfloat16 both are compared with
    the float32 computation: the kernels' outputs and gradients are no
    further from it than the XLA path's (the kernels keep d(logits) in
    float32 where the XLA path rounds it). The key bias's gradient is zero in
    exact arithmetic (a constant per softmax row) and float noise in all
    three, so it is left out."""
    rel = lambda a, b: float(np.linalg.norm(np.asarray(a, np.float32) - np.asarray(b, np.float32))
                             / max(np.linalg.norm(np.asarray(b, np.float32)), 1e-30))

    def run(make, impl, x, *args):
        module = make(dtype if impl else jnp.float32)
        module.attention = impl or "xla"
        y, grads, gx = _outputs_and_grads(module, x, *args)
        names = ["/".join(map(str, k)) for k, _ in nnx.to_flat_state(nnx.state(module,
                                                                              nnx.Param))]
        return [y, gx] + [g for n, g in zip(names, grads) if n != "k_proj/bias"]

    def check(make, x, *args):
        truth = run(make, None, x, *args)
        xla, pallas = run(make, "xla", x, *args), run(make, "pallas", x, *args)
        for t, a, b in zip(truth, xla, pallas):
            if dtype == jnp.float32:
                assert rel(b, a) < 1e-5
            else:
                assert rel(b, t) <= 1.2 * rel(a, t) + 1e-3

    check(lambda dt: vit.Attention(128, 4, dtype=dt, rngs=nnx.Rngs(0)),
          jax.random.normal(jax.random.key(0), (2, 9, 128)))
    cfg = beats_layers.BEATsConfig(encoder_embed_dim=128, encoder_attention_heads=2, num_buckets=16,
                            max_distance=32, gru_rel_pos=True, relative_position_embedding=True)
    make = lambda dt: beats_layers.MultiheadAttention(cfg, has_bias_table=True, dtype=dt,
                                               rngs=nnx.Rngs(1))
    x = jax.random.normal(jax.random.key(1), (2, 7, 128))
    for positions in ([[0, 2, 3, 5, 8, 9, 12]], [[0, 2, 3, 5, 8, 9, 12], [1, 2, 4, 5, 6, 9, 11]]):
        check(make, x, make(jnp.float32).compute_bias(jnp.array(positions)))


def test_pallas_is_refused_on_gpus():
    layers.check_attention("pallas", "tpu")
    layers.check_attention("pallas", "cpu")
    with pytest.raises(ValueError, match="attention='pallas' runs on TPUs"):
        layers.check_attention("pallas", "gpu")


def test_grouped_qkv_layout():
    """group_qkv puts each 128-lane head group's q, k, v side by side."""
    from matpac_jax.models import attention_kernel as ak

    heads, d = 4, 64  # two groups of two heads
    x = jnp.arange(3 * heads * d, dtype=jnp.float32)[None]
    g = ak.group_qkv(x, heads)
    assert [int(g[0, i]) for i in (0, 128, 256, 384)] == [0, 256, 512, 128]
    np.testing.assert_array_equal(g.reshape(2, 3, 128)[:, 0].reshape(1, -1), x[:, :heads * d])
    assert ak.heads_per_group(12, 64) == 2 and ak.heads_per_group(16, 32) == 4
    assert ak.heads_per_group(2, 32) == 2 and ak.heads_per_group(2, 128) == 1
    with pytest.raises(ValueError, match="128-lane"):
        ak.heads_per_group(3, 64)


def test_kernels_run_per_device_on_their_batch_share_under_a_mesh():
    """In the training step (a mesh and its batch axes in scope) the Pallas
    kernels and cuDNN calls run under shard_map, each device on its rows: XLA
    cannot partition a kernel, and jax's rule for the cuDNN call gathered
    BEATs' per-example bias. Same values and gradients as unsharded, the
    shared bias's gradient summed over devices."""
    from matpac_jax.models import attention_kernel as ak
    from matpac_jax.training import sharding

    mesh = sharding.make_mesh({"data": 4, "fsdp": 2, "tensor": 1})
    b, n, heads = 8, 7, 2
    keys = jax.random.split(jax.random.key(0), 4)
    qkv = jax.random.normal(keys[0], (b, n, 3 * heads * 32))
    gate = jax.random.uniform(keys[1], (b, heads, n)) + 0.5
    pos = jax.random.normal(keys[2], (1, heads, n, n))
    w = jax.random.normal(keys[3], (b, n, heads * 32))

    def loss(qkv, gate, pos):
        return jnp.sum(ak.attention(qkv, heads, None, gate, pos) * w)

    def sharded(qkv, gate, pos):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), \
                layers.batch_axes(sharding.BATCH_AXES):
            return loss(qkv, gate, pos)

    grad = lambda f: jax.jit(jax.value_and_grad(f, (0, 1, 2)), in_shardings=(
        sharding.batch_sharding(mesh, 3), sharding.batch_sharding(mesh, 3),
        sharding.replicated(mesh)))
    assert "manual_computation" in grad(sharded).lower(qkv, gate, pos).as_text()
    (la, ga), (lb, gb) = grad(loss)(qkv, gate, pos), grad(sharded)(qkv, gate, pos)
    np.testing.assert_allclose(lb, la, rtol=1e-5)
    for x, y in zip(gb, ga):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
