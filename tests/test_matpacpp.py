"""MATPAC++ (docs/SPEC.md section 11): MCL loss, winner-takes-all gradient routing, config."""
import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from matpac_jax import methods
from matpac_jax.models.masked_latent import Student, Teacher
from matpac_jax.objectives import masked_latent as ml

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _config(name, arg=None):
    spec = importlib.util.spec_from_file_location("cfg", ROOT / "configs" / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def _official_mcl(preds, target, temperature, end):
    """The official `forward_loss_pred` with use_mcl, in numpy."""
    n = lambda x: x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    d = 2 - 2 * np.sum(n(target)[:, :, None] * n(preds), axis=-1)
    if temperature > end:
        q = np.exp(-(d - d.min(-1, keepdims=True)) / temperature)  # torch.softmax is stable
        q /= q.sum(-1, keepdims=True)
        return np.mean(np.sum(q * d, -1))
    return np.mean(d.min(-1))


def test_mcl_loss_is_the_official_formula_soft_and_hard():
    rng = np.random.default_rng(0)
    preds = rng.standard_normal((2, 6, 4, 8)).astype(np.float32)
    target = rng.standard_normal((2, 6, 8)).astype(np.float32)
    for temp in (0.1, 0.01, 5e-5):  # two annealed, one past temperature_end: hard WTA
        loss, winner, q = ml.mcl_prediction_loss(preds, target, temp, 1e-4)
        np.testing.assert_allclose(loss, _official_mcl(preds, target, temp, 1e-4), rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(q), np.eye(4)[np.asarray(winner)])
    # the official schedule: 0.1 * 0.99997**update, below 1e-4 after update ~230k
    assert float(ml.mcl_temperature(0)) == pytest.approx(0.1)
    assert float(ml.mcl_temperature(230_250)) > 1e-4 > float(ml.mcl_temperature(230_270))


class _Probe(nnx.Module):
    """The hypothesis heads plus a zero Param: its gradient is dL/d(hypotheses)."""

    def __init__(self, heads, shape):
        self.heads = heads
        self.delta = nnx.Param(jnp.zeros(shape, jnp.float32))

    def __call__(self, y):
        return self.heads(y) + self.delta[...]


@pytest.fixture(scope="module")
def tiny():
    rngs = nnx.Rngs(0)
    student = Student.create(in_freq=80, max_frames=64, dim=32, depth=1, num_heads=2,
                             pred_dim=32, pred_depth=1, pred_heads=2, head_out_dim=32,
                             head_hidden_dim=32, head_bottleneck_dim=16, hypotheses=3,
                             rngs=rngs)
    teacher = Teacher.create(student, rngs=rngs)
    x = jax.random.normal(jax.random.key(1), (2, 80, 64))
    ids_shuffle, ids_restore, keep = ml.random_masking(jax.random.key(2), 2, 20, 0.7)
    student.predictor.pred = _Probe(student.predictor.pred, (2, 20 - keep, 3, 32))
    center = jnp.full((1, 1, 32), 1 / 32)

    @nnx.jit
    def loss(s, temp=1e-5):
        return ml.masked_latent_loss(s, teacher, center, x, ids_shuffle, ids_restore, keep,
                                     alpha=0.5, standardize_target=False, mcl_temp=temp,
                                     mcl_temp_end=1e-4)

    grad = nnx.jit(nnx.grad(lambda s, temp: loss(s, temp), has_aux=True))
    return student, loss, grad


def test_winner_takes_all_routes_gradient_to_the_winning_head_only(tiny):
    student, loss, grad = tiny
    grads, aux = grad(student, 1e-5)
    g = np.asarray(grads.predictor.pred.delta[...])  # (B, n, K, D)
    winner = np.asarray(aux["winner"])
    won = np.eye(3, dtype=bool)[winner]  # (B, n, K)
    assert len(np.unique(winner)) > 1  # several heads win some token
    # By construction: a head that lost a token gets exactly no gradient from it
    # (neither the prediction loss nor the classification head sees it) ...
    assert np.all(g[~won] == 0)
    assert np.all(np.linalg.norm(g[won], axis=-1) > 0)
    # ... and numerically: moving a losing hypothesis leaves the loss as it is,
    # moving the winning one changes it as its gradient says.
    base = float(loss(student)[0])
    direction = np.random.default_rng(0).standard_normal(32).astype(np.float32)
    for k in range(3):
        delta = np.zeros(g.shape, np.float32)
        delta[0, 0, k] = 1e-3 * direction
        student.predictor.pred.delta.set_value(jnp.asarray(delta))
        moved = float(loss(student)[0])
        student.predictor.pred.delta.set_value(jnp.zeros(g.shape))
        if k == winner[0, 0]:
            assert moved - base == pytest.approx(float(g[0, 0, k] @ delta[0, 0, k]), rel=0.05)
            assert moved != base
        else:
            assert moved == base
    # The head parameters of a head get the sum over the tokens it won only.
    kernel_g = np.asarray(grads.predictor.pred.heads.bias[...])  # (K, D)
    np.testing.assert_allclose(kernel_g, np.einsum("bnkd->kd", g), rtol=1e-5, atol=1e-7)


def test_annealed_mcl_trains_every_head_by_its_soft_assignment(tiny):
    student, _, grad = tiny
    grads, aux = grad(student, 0.1)
    g = np.asarray(grads.predictor.pred.delta[...])
    assert np.all(np.linalg.norm(g, axis=-1) > 0)  # every head of every token learns
    q = np.asarray(aux["assignment"])
    np.testing.assert_allclose(q.sum(-1), 1.0, rtol=1e-6)
    assert np.all((q > 0) & (q < 1))


def test_matpacpp_config_is_matpac_plus_the_official_mcl_block():
    pp, base = _config("matpacpp_as2m.py"), _config("matpac_as2m.py")
    o = pp.objective
    assert (o.prediction, o.mcl_heads, o.mcl_temp_start, o.mcl_temp_end, o.mcl_temp_decay) == (
        "mcl", 5, 0.1, 1e-4, 0.99997)
    for key, value in base.objective.items():
        assert o[key] == value, key
    assert pp.model == base.model and pp.opt == base.opt and pp.method == "matpac"
    demo = _config("matpacpp_as2m.py", "demo")  # demo: T reaches 1e-4 at 78 % of the run
    assert float(ml.mcl_temperature(780, 0.1, demo.objective.mcl_temp_decay)) > 1e-4
    assert float(ml.mcl_temperature(782, 0.1, demo.objective.mcl_temp_decay)) < 1e-4


def test_method_builds_k_heads_and_names_a_bad_option():
    c = _config("matpacpp_as2m.py", "demo")
    c.model.update(dict(dim=32, depth=1, num_heads=2, pred_dim=32, pred_depth=1, pred_heads=2,
                        head_out_dim=32, head_hidden_dim=32, head_bottleneck_dim=16))
    c.data.crop_frames = 64
    method = methods.get(c)
    model = method.build(nnx.Rngs(0))
    assert model.student.predictor.pred.kernel.shape == (5, 32, 32)
    x = jax.random.normal(jax.random.key(1), (2, 80, 64))
    loss, metrics = nnx.jit(method.loss)(model, {"x": x}, jax.random.key(0), jnp.int32(0))
    assert np.isfinite(float(loss)) and 1 <= float(metrics["mcl_head_perplexity"]) <= 5
    assert method.schedules(0)["mcl_temp"] == pytest.approx(0.1)
    c.objective.prediction = "mixture"
    with pytest.raises(ValueError, match="objective.prediction='mixture'"):
        methods.get(c)
