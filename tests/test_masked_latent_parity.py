"""Parity with the official M2D / MATPAC PyTorch code (fixtures/m2d_matpac_ref.npz)."""
import ast

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from matpac_jax.conversion.official import load_heads, load_official
from matpac_jax.models.masked_latent import Student, Teacher
from matpac_jax.models.vit import sincos_pos_table
from matpac_jax.objectives import masked_latent as ml

TOL = 1e-4


@pytest.fixture(scope="module")
def ref(fixtures_dir):
    d = np.load(fixtures_dir / "m2d_matpac_ref.npz")
    return {k: d[k] for k in d.files}, ast.literal_eval(str(d["config"]))


@pytest.fixture(scope="module")
def models(ref):
    d, _ = ref
    m = load_official({k[4:]: v for k, v in d.items() if k.startswith("m2d/")})
    student, teacher = m.student, m.teacher
    student.head = load_heads(d, "student_head/")
    teacher.head = load_heads(d, "teacher_head/")
    return m, student, teacher


def close(a, b):
    np.testing.assert_allclose(np.asarray(a), b, atol=TOL, rtol=0)


def test_sincos_table_equals_checkpoint(ref):
    d, cfg = ref
    gf, gt = cfg["input_size"][0] // 16, cfg["input_size"][1] // 16
    np.testing.assert_array_equal(sincos_pos_table(gf, gt, cfg["embed_dim"]), d["m2d/pos_embed"][0])
    np.testing.assert_array_equal(
        sincos_pos_table(gf, gt, cfg["decoder_embed_dim"]), d["m2d/decoder_pos_embed"][0])


def test_encoder_and_embeddings(ref, models):
    d, _ = ref
    m = models[0]
    full = m.encoder(jnp.asarray(d["input"]))
    close(full, d["encoder_full"])
    y = np.asarray(full)[:, 1:]
    b, n, dim = y.shape  # b (f t) d -> b t (f d)
    f = m.encoder.grid_f
    frames = y.reshape(b, f, n // f, dim).transpose(0, 2, 1, 3).reshape(b, n // f, f * dim)
    close(frames, d["frame_embedding"])
    close(frames.mean(1), d["clip_embedding"])


def _loss(ref, models, **kw):
    d, cfg = ref
    _, student, teacher = models
    return ml.masked_latent_loss(
        student, teacher, jnp.asarray(d["center"]), jnp.asarray(d["input"]),
        jnp.asarray(d["ids_shuffle"]), jnp.asarray(d["ids_restore"]), cfg["len_keep"],
        student_temp=cfg["student_temp"], teacher_temp=cfg["teacher_temp"],
        center_momentum=cfg["center_momentum"], **kw)


def test_m2d_loss(ref, models):
    d, _ = ref
    loss, aux = jax.jit(lambda: _loss(ref, models, alpha=1.0, standardize_target=True))()
    for k in ("student_latent", "teacher_target", "prediction"):
        close(aux[k], d[k])
    close(loss, d["loss_m2d"])


def test_matpac_loss(ref, models):
    d, _ = ref
    loss, aux = jax.jit(lambda: _loss(ref, models, alpha=0.5, standardize_target=False))()
    close(aux["loss_pred"], d["loss_pred_matpac"])
    for k in ("student_logits", "teacher_probs", "loss_cls", "new_center"):
        close(aux[k], d[k])
    close(loss, d["loss_matpac"])


def test_gradients_only_reach_student(ref, models):
    """The loss's gradient reaches every student parameter and no teacher one:
    the teacher's targets are constants of the loss (the official code computes
    them under torch.no_grad). tests/test_training.py checks the whole step."""
    @nnx.jit
    def grads(student, teacher):
        def f(s, t):
            return _loss(ref, (None, s, t), alpha=0.5, standardize_target=False)[0]
        return nnx.grad(f, argnums=(0, 1))(student, teacher)

    g_student, g_teacher = grads(models[1], models[2])
    norms = jax.tree.leaves(jax.tree.map(lambda g: jnp.abs(g).sum(), g_student))
    assert all(np.isfinite(n) for n in norms) and sum(norms) > 0
    assert sum(n > 0 for n in norms) >= len(norms) - 1  # all but unused ones (MCL: none here)
    teacher = jax.tree.leaves(g_teacher)
    assert teacher and all(not np.asarray(g).any() for g in teacher)


def test_random_masking_and_schedules():
    ids_s, ids_r, keep = ml.random_masking(jax.random.key(0), 3, 190, 0.7)
    assert keep == 57 and ml.random_masking(jax.random.key(0), 1, 190, 0.6)[2] == 76
    np.testing.assert_array_equal(jnp.take_along_axis(ids_s, ids_r, 1), np.tile(np.arange(190), (3, 1)))
    assert np.isclose(ml.teacher_temp_schedule(0), 0.04)
    assert np.isclose(ml.teacher_temp_schedule(9827 // 2), 0.055, atol=1e-5)
    assert np.isclose(ml.teacher_temp_schedule(10**6), 0.07)
    assert np.isclose(ml.ema_momentum_schedule(50, 100, 0.998, 1.0), 0.999)


def test_teacher_init_as_official_and_ema_update():
    rngs = nnx.Rngs(0)
    s = Student.create(max_frames=64, dim=64, depth=1, num_heads=2, pred_dim=32,
                          pred_depth=1, pred_heads=2, head_out_dim=16, head_hidden_dim=32,
                          head_bottleneck_dim=8, rngs=rngs)
    t = Teacher.create(s, rngs=rngs)
    ts, ss = nnx.state(t.stack, nnx.Param), nnx.state(s.encoder.stack, nnx.Param)
    assert jax.tree.structure(ts) == jax.tree.structure(ss)
    # official init: independent blocks; head MLP N(0, 0.02), last layer = student's
    assert not np.allclose(t.stack.blocks[0].attn.qkv.kernel[...],
                           s.encoder.stack.blocks[0].attn.qkv.kernel[...])
    fc2 = np.asarray(t.head.fc2.kernel[...])
    assert abs(fc2.std() - 0.02) < 0.002 and not np.allclose(fc2, s.head.fc2.kernel[...])
    np.testing.assert_array_equal(t.head.last_v[...], s.head.last_v[...])
    np.testing.assert_array_equal(t.head.last_g[...], np.ones(16))
    before = jax.tree.map(np.asarray, (ts, nnx.state(t.head, nnx.Param)))
    ml.ema_update(t, s, 0.9, 0.5)
    after = (nnx.state(t.stack, nnx.Param), nnx.state(t.head, nnx.Param))
    jax.tree.map(lambda a, b, c: np.testing.assert_allclose(a, 0.9 * b + 0.1 * np.asarray(c),
                                                            rtol=1e-6),
                 after[0], before[0], ss)
    jax.tree.map(lambda a, b, c: np.testing.assert_allclose(a, 0.5 * b + 0.5 * np.asarray(c),
                                                            rtol=1e-6),
                 after[1], before[1], nnx.state(s.head, nnx.Param))


def test_bfloat16_compute_float32_params():
    s = Student.create(max_frames=64, dim=64, depth=1, num_heads=2, pred_dim=32, pred_depth=1,
                          pred_heads=2, head_out_dim=16, head_hidden_dim=32, head_bottleneck_dim=8,
                          dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    t = Teacher.create(s, rngs=nnx.Rngs(1))
    ids_s, ids_r, keep = ml.random_masking(jax.random.key(0), 2, 20, 0.7)
    loss, aux = jax.jit(lambda: ml.masked_latent_loss(
        s, t, jnp.zeros((1, 1, 16)), jnp.ones((2, 80, 64)), ids_s, ids_r, keep, alpha=0.5,
        standardize_target=False, teacher_temp=0.05))()
    assert np.isfinite(loss) and aux["student_logits"].dtype == jnp.float32
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(s, nnx.Param)))


def test_materialize_grad_is_an_exact_identity():
    """The fusion cut in every ViT block changes no value or gradient bit."""
    from matpac_jax.models.layers import materialize_grad

    x = jax.random.normal(jax.random.key(0), (2, 7, 16)) * 1e3
    w = jax.random.normal(jax.random.key(1), (16, 16))

    def f(x, cut):
        h = materialize_grad(x) if cut else x
        return jnp.sum(jnp.tanh(h @ w) * h)

    np.testing.assert_array_equal(materialize_grad(x), x)
    g_cut = jax.jit(jax.grad(f), static_argnums=1)(x, True)
    g_ref = jax.jit(jax.grad(f), static_argnums=1)(x, False)
    np.testing.assert_array_equal(np.asarray(g_cut), np.asarray(g_ref))
