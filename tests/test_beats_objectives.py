"""BEATs masked audio modelling, random-projection tokenizer and VQ tokenizer objective."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from matpac_jax.models.beats import BEATsEncoder, Estimator, LabelPredictor
from matpac_jax.models.beats_layers import BEATsConfig
from matpac_jax.models.codebook import (
    BEATsTokenizer, CodebookState, RandomProjectionTokenizer, VectorQuantizer, spherical_kmeans)
from matpac_jax.objectives.beats_mam import MaskIndices, mam_loss, random_mask
from matpac_jax.objectives.beats_tokenizer import tokenizer_loss

CFG = BEATsConfig(
    embed_dim=32, encoder_embed_dim=32, encoder_ffn_embed_dim=64, encoder_layers=1,
    encoder_attention_heads=4, conv_pos=16, conv_pos_groups=4, deep_norm=True,
    relative_position_embedding=True, num_buckets=32, max_distance=64, gru_rel_pos=True,
    dropout=0.0, attention_dropout=0.0, layer_wise_gradient_decay_ratio=0.6,
    quant_n=16, quant_dim=8)
B, T = 2, 64  # 4 x 8 = 32 patches
N = (T // 16) * 8


def _fbank(seed=0):
    return jax.random.normal(jax.random.key(seed), (B, T, 128))


@pytest.fixture(scope="module")
def mam():
    @nnx.jit  # one compiled init instead of many eager ops
    def build():
        rngs = nnx.Rngs(0)
        return (BEATsEncoder(CFG, rngs=rngs),
                LabelPredictor(CFG, num_classes=16, num_layers=1, num_heads=4, rngs=rngs))
    return build()


@nnx.jit
def _mam_step(enc, pred, labels, key):
    """Loss, aux and gradients for both modules; mam_loss draws the mask from `key`."""
    def loss_fn(e, p):
        return mam_loss(e, p, _fbank(), labels, rng=key)
    return nnx.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(enc, pred)


def test_random_mask_fixed_count_and_partition():
    m = random_mask(jax.random.key(1), 3, N, 0.75)
    assert m.keep.shape == (3, N - int(N * 0.75)) and m.masked.shape == (3, int(N * 0.75))
    for k, q in zip(np.asarray(m.keep), np.asarray(m.masked)):
        np.testing.assert_array_equal(np.sort(np.concatenate([k, q])), np.arange(N))
    assert not np.array_equal(np.asarray(m.keep[0]), np.asarray(m.keep[1]))


def test_mam_loss_masked_only_and_gradients(mam):
    enc, pred = mam
    key = jax.random.key(3)
    labels = jax.random.randint(jax.random.key(2), (B, N), 0, 16)
    (loss, aux), (ge, gp) = _mam_step(enc, pred, labels, key)
    assert np.isfinite(float(loss)) and 0 <= float(aux["accuracy"]) <= 1
    assert int(aux["num_masked"]) == B * int(N * 0.75)
    for g in (ge.patch_embedding.kernel, ge.encoder.layers[0].self_attn.relative_attention_bias,
              ge.encoder.layers[0].self_attn.grep_a, ge.encoder.pos_conv.weight_g,
              gp.mask_emb, gp.head.kernel):
        assert np.all(np.isfinite(np.asarray(g[...]))) and np.abs(np.asarray(g[...])).max() > 0
    mask = random_mask(key, B, N)  # the mask mam_loss drew
    rows = jnp.arange(B)[:, None]
    other = labels.at[rows, mask.keep].set((labels[rows, mask.keep] + 5) % 16)
    (loss2, _), _ = _mam_step(enc, pred, other, key)
    np.testing.assert_allclose(float(loss2), float(loss), rtol=1e-6)
    other = labels.at[rows, mask.masked].set((labels[rows, mask.masked] + 5) % 16)
    (loss3, _), _ = _mam_step(enc, pred, other, key)
    assert abs(float(loss3) - float(loss)) > 1e-4


def test_visible_outputs_ignore_masked_patch_content(mam):
    enc, _ = mam
    x = _fbank()
    mask = random_mask(jax.random.key(4), B, N)
    rows = jnp.arange(B)[:, None]
    run = nnx.jit(lambda e, t, k: e(t, k, num_patches=N))
    t1 = enc.embed(x)
    t2 = t1.at[rows, mask.masked].set(123.0)
    np.testing.assert_array_equal(np.asarray(run(enc, t1[rows, mask.keep], mask.keep)),
                                  np.asarray(run(enc, t2[rows, mask.keep], mask.keep)))


def test_random_projection_tokenizer_seeded():
    x = _fbank()
    a = RandomProjectionTokenizer(num_codes=64, dim=16, seed=3)
    b = RandomProjectionTokenizer(num_codes=64, dim=16, seed=3)
    c = RandomProjectionTokenizer(num_codes=64, dim=16, seed=4)
    la, lb, lc = (np.asarray(t.extract_labels(x)) for t in (a, b, c))
    assert la.shape == (B, N) and la.dtype == np.int32 and la.max() < 64
    np.testing.assert_array_equal(la, lb)
    assert not np.array_equal(la, lc)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(a.codebook[...]), axis=1), 1, atol=1e-6)
    u = a.usage(la)
    assert float(u["counts"].sum()) == B * N
    assert int(u["used_codes"]) + int(u["dead_codes"]) == 64
    assert 1 <= float(u["perplexity"]) <= int(u["used_codes"]) + 1e-4
    assert not any(isinstance(v, nnx.Param) for _, v in nnx.iter_graph(a))


def test_random_projection_tokenizer_patch_input_norm():
    """'patch' labels depend only on each patch's shape: a per-patch gain and
    offset (here one per clip, so every patch gets it) leaves them unchanged,
    while the paper's plain labels move."""
    x = _fbank()
    plain = RandomProjectionTokenizer(num_codes=64, dim=16, seed=3)
    shaped = RandomProjectionTokenizer(num_codes=64, dim=16, seed=3, input_norm="patch")
    gain = jnp.asarray([0.5, 3.0])[:B, None, None]
    y = x * gain - 1.5
    np.testing.assert_array_equal(np.asarray(shaped.extract_labels(x)),
                                  np.asarray(shaped.extract_labels(y)))
    assert not np.array_equal(np.asarray(plain.extract_labels(x)),
                              np.asarray(plain.extract_labels(y)))
    with pytest.raises(ValueError, match="tokenizer_input_norm"):
        RandomProjectionTokenizer(num_codes=64, dim=16, input_norm="clip")


def test_kmeans_init_unit_codewords_and_ema_moves_used_codes():
    vq = VectorQuantizer(16, 8)
    z = jax.random.normal(jax.random.key(5), (256, 8))
    vq.kmeans_init(z, jax.random.key(6))
    w0 = np.asarray(vq.embedding[...])
    np.testing.assert_allclose(np.linalg.norm(w0, axis=1), 1, atol=1e-5)
    assert bool(vq.initted[...]) and float(vq.cluster_size[...].sum()) == 256
    # only codes 0 and 1 are used by this batch
    zz = jnp.asarray(np.concatenate([w0[:1] + 0.3, w0[1:2] - 0.2]).repeat(4, axis=0))
    ids = jnp.asarray([0] * 4 + [1] * 4)
    vq.ema_update(zz, ids)
    w1 = np.asarray(vq.embedding[...])
    assert np.abs(w1[:2] - w0[:2]).max() > 1e-4
    np.testing.assert_allclose(w1[2:], w0[2:], atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(w1, axis=1), 1, atol=1e-5)


def test_commitment_straight_through_reaches_encoder_side():
    @nnx.jit
    def build():
        rngs = nnx.Rngs(0)
        return BEATsTokenizer(CFG, rngs=rngs), Estimator(CFG, teacher_dim=24, num_layers=1, rngs=rngs)
    tok, est = build()
    teacher = jax.random.normal(jax.random.key(7), (B, N, 24))
    x = _fbank()
    params = nnx.state(tok, nnx.Param)
    assert "quantize" not in params  # codebook is CodebookState, never optimised
    opt = nnx.Optimizer(tok, optax.sgd(0.1), wrt=nnx.Param)
    assert not bool(tok.quantize.initted[...])

    @nnx.jit
    def step(tok, est, opt, key):
        def loss_fn(tok, est):  # lazy k-means init on this first batch, then EMA update
            return tokenizer_loss(tok, est, x, teacher, update_codebook=True, init_key=key)
        (loss, aux), (g_tok, g_est) = nnx.value_and_grad(
            loss_fn, argnums=(0, 1), has_aux=True)(tok, est)
        opt.update(tok, g_tok)
        return loss, aux, g_tok, g_est

    loss, aux, g_tok, g_est = step(tok, est, opt, jax.random.key(8))
    assert bool(tok.quantize.initted[...])
    w_init = np.asarray(tok.quantize.embedding[...])
    loss, aux, g_tok, g_est = step(tok, est, opt, jax.random.key(8))  # init is skipped now
    assert np.isfinite(float(loss)) and float(aux["commitment"]) > 0
    assert 0 <= float(aux["reconstruction"]) <= 2
    for g in (g_tok.quantize_layer.linear2.kernel, g_tok.patch_embedding.kernel,
              g_est.proj_in.kernel):
        assert np.abs(np.asarray(g[...])).max() > 0
    # EMA moved the codebook (outside the optimiser), codewords stay unit
    w_after = np.asarray(tok.quantize.embedding[...])
    assert 0 < np.abs(w_after - w_init).max() < 0.1
    np.testing.assert_allclose(np.linalg.norm(w_after, axis=1), 1, atol=1e-5)
    assert 1 <= float(aux["perplexity"]) <= int(aux["used_codes"]) + 1e-4
    assert int(aux["used_codes"]) + int(aux["dead_codes"]) == 16
    assert int(aux["ema_dead_codes"]) <= 16
    # explicit first-batch init (instead of the lazy one above)
    nnx.jit(lambda t, x, k: t.quantize.kmeans_init(t.quantize_input(x), k))(
        tok, x, jax.random.key(1))
    np.testing.assert_allclose(np.linalg.norm(np.asarray(tok.quantize.embedding[...]), axis=1),
                               1, atol=1e-5)
    assert float(tok.quantize.cluster_size[...].sum()) == B * N
    # straight-through: the commitment-free path also carries gradient to the encoder side
    vq = tok.quantize
    z = jax.random.normal(jax.random.key(9), (5, 8))
    g = jax.grad(lambda z: jnp.sum(vq(z)[0] * jnp.arange(8.0)))(z)
    assert np.abs(np.asarray(g)).max() > 0


def test_sharded_kmeans_equals_unsharded():
    assert jax.device_count() == 8
    z = np.array(jax.random.normal(jax.random.key(10), (8 * 40, 8)))
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    key = jax.random.key(11)
    km = jax.jit(spherical_kmeans, static_argnums=(1, 3))
    want_m, want_b = km(jnp.asarray(z), 16, key, 10)
    mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))  # as the trainer
    zs = jax.device_put(z, NamedSharding(mesh, P("data")))
    assert len(zs.addressable_shards) == 8
    got_m, got_b = km(zs, 16, key, 10)
    np.testing.assert_allclose(np.asarray(got_m), np.asarray(want_m), atol=1e-5)
    np.testing.assert_array_equal(np.asarray(got_b), np.asarray(want_b))
    np.testing.assert_allclose(np.linalg.norm(np.asarray(got_m), axis=1), 1, atol=1e-5)
    assert float(got_b.sum()) == z.shape[0]


def test_codebook_state_is_not_a_param():
    vq = VectorQuantizer(4, 2)
    assert isinstance(vq.embedding, CodebookState) and not isinstance(vq.embedding, nnx.Param)
    assert len(jax.tree.leaves(nnx.state(vq, nnx.Param))) == 0
    assert isinstance(MaskIndices(jnp.zeros((1, 1)), jnp.zeros((1, 1))), tuple)
