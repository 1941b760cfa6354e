"""BEATs backbone / tokenizer / importer against outputs of the official PyTorch code."""
import ast

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from matpac_jax.conversion import torch_pickle
from matpac_jax.conversion.beats import load_beats
from matpac_jax.conversion.layout import CheckpointMismatchError
from matpac_jax.data import frontends
from matpac_jax.models.beats import BEATsEncoder
from matpac_jax.models.beats_layers import BEATsConfig, relative_position_bucket
from matpac_jax.models.codebook import BEATsTokenizer


def _npz_checkpoint(path, prefix):
    ref = np.load(path)
    sd = {k[len(prefix):]: ref[k] for k in ref.files if k.startswith(prefix)}
    return {"cfg": ast.literal_eval(str(ref["config"])), "model": sd}, ref


@pytest.fixture(scope="module")
def fbank(fixtures_dir):
    """torchaudio's fbank of the fixture waveform: the official model input."""
    return jnp.asarray(np.load(fixtures_dir / "mel_ref.npz")["beats_fbank_normalized"])


@pytest.fixture(scope="module")
def beats_ref(fixtures_dir):
    return _npz_checkpoint(fixtures_dir / "beats_ref.npz", "beats/")


@pytest.fixture(scope="module")
def tokenizer_ref(fixtures_dir):
    return _npz_checkpoint(fixtures_dir / "beats_tokenizer_ref.npz", "tokenizer/")


_features = nnx.jit(lambda m, x: m.extract_features(x))
_labels = nnx.jit(lambda m, x: m.extract_labels(x))


def test_features_match_official(beats_ref, fbank):
    ckpt, ref = beats_ref
    model = load_beats(ckpt)
    assert type(model) is BEATsEncoder
    out = np.asarray(_features(model, fbank))
    assert out.shape == ref["features"].shape == (2, 96, 96)
    np.testing.assert_allclose(out, ref["features"], atol=1e-4, rtol=0)


def test_features_with_project_frontend(beats_ref):
    """Our numpy Kaldi fbank is within its own tolerance, and so are the features."""
    ckpt, ref = beats_ref
    x = frontends.normalize(frontends.beats_fbank(ref["waveform"]), "beats")
    out = np.asarray(_features(load_beats(ckpt), jnp.asarray(x)))
    np.testing.assert_allclose(out, ref["features"], atol=1e-3, rtol=0)


def test_tokenizer_labels_exact(tokenizer_ref, fbank):
    ckpt, ref = tokenizer_ref
    tok = load_beats(ckpt)
    assert type(tok) is BEATsTokenizer
    labels = np.asarray(_labels(tok, fbank))
    assert labels.shape == (2, 96) and labels.dtype == np.int32
    np.testing.assert_array_equal(labels.reshape(-1), ref["labels"])


def test_official_pt_files(fixtures_dir, beats_ref, tokenizer_ref, fbank):
    model = load_beats(fixtures_dir / "BEATs_small.pt")
    np.testing.assert_allclose(np.asarray(_features(model, fbank)), beats_ref[1]["features"],
                               atol=1e-4, rtol=0)
    tok = load_beats(str(fixtures_dir / "Tokenizer_small.pt"))
    np.testing.assert_array_equal(np.asarray(_labels(tok, fbank)).reshape(-1),
                                  tokenizer_ref[1]["labels"])
    assert bool(tok.quantize.initted[...])


def test_subset_path_uses_original_positions(beats_ref, fbank):
    """All positions given == full path; a subset gives different results than the
    same tokens packed at positions 0..n-1 (the bias uses the original indices)."""
    model = load_beats(beats_ref[0])
    tokens = nnx.jit(lambda m, x: m.embed(x))(model, fbank)
    b, n, _ = tokens.shape
    run = nnx.jit(lambda m, t, p: m(t, p, num_patches=n))
    full = np.asarray(_features(model, fbank))
    allpos = jnp.broadcast_to(jnp.arange(n), (b, n))
    np.testing.assert_allclose(np.asarray(run(model, tokens, allpos)), full, atol=1e-5)
    keep = jnp.broadcast_to(jnp.arange(0, n, 4), (b, n // 4))
    sub = run(model, tokens[:, ::4], keep)
    packed = run(model, tokens[:, ::4], keep // 4)
    assert np.abs(np.asarray(sub) - np.asarray(packed)).max() > 1e-3


def test_bucket_edges_match_float32_torch_maths():
    rel = np.arange(-2000, 2001)
    got = np.asarray(relative_position_bucket(jnp.asarray(rel), 320, 800))
    # torch: float32 log of (n / 80) / float32(log(10)) * 80, truncated.
    n = np.abs(rel)
    large = 80 + (np.log(np.maximum(n, 1).astype(np.float32) / np.float32(80))
                  / np.float32(np.log(10.0)) * np.float32(80)).astype(np.int64)
    want = np.where(rel > 0, 160, 0) + np.where(n < 80, n, np.minimum(large, 159))
    np.testing.assert_array_equal(got, want)
    assert got.min() == 0 and got.max() == 319


def test_dropout_cfg_loads_in_eval_mode(beats_ref, fbank):
    ckpt, ref = beats_ref
    model = load_beats({"cfg": {**ckpt["cfg"], "dropout": 0.1}, "model": ckpt["model"]})
    np.testing.assert_allclose(np.asarray(_features(model, fbank)), ref["features"], atol=1e-4)


def test_bf16_compute_close(beats_ref, fbank):
    ckpt, ref = beats_ref
    model = load_beats(ckpt, dtype=jnp.bfloat16)
    out = np.asarray(_features(model, fbank))
    assert out.dtype == np.float32
    assert np.abs(out - ref["features"]).mean() < 3e-2


def test_one_error_lists_every_bad_key(fixtures_dir):
    ckpt = torch_pickle.load(fixtures_dir / "Tokenizer_small.pt")
    sd = dict(ckpt["model"])
    del sd["encoder.layers.1.fc2.bias"]
    del sd["quantize_layer.2.weight"]
    sd["encoder.layers.7.fc1.weight"] = np.zeros((3, 3), np.float32)
    sd["post_extract_proj.weight"] = np.zeros((96, 65), np.float32)
    sd["encoder.layers.1.self_attn.relative_attention_bias.weight"] = np.ones((320, 4), np.float32)
    with pytest.raises(CheckpointMismatchError) as err:
        load_beats({"cfg": ckpt["cfg"], "model": sd}, "Tokenizer_small.pt")
    e = err.value
    assert e.missing == ["encoder.layers.1.fc2.bias", "quantize_layer.2.weight"]
    assert e.unexpected == ["encoder.layers.7.fc1.weight"]
    assert [m[0] for m in e.mismatched] == [
        "encoder.layers.1.self_attn.relative_attention_bias.weight", "post_extract_proj.weight"]
    msg = str(e)
    for key in ("fc2.bias", "quantize_layer.2.weight", "layers.7.fc1", "(96, 64) vs (96, 65)",
                "Tokenizer_small.pt"):
        assert key in msg


def test_predictor_keys_only_when_finetuned(beats_ref):
    ckpt, _ = beats_ref
    sd = dict(ckpt["model"])
    sd["predictor.weight"] = np.zeros((5, 96), np.float32)
    sd["predictor.bias"] = np.zeros((5,), np.float32)
    with pytest.raises(CheckpointMismatchError, match="predictor.weight"):
        load_beats({"cfg": ckpt["cfg"], "model": sd})
    cfg = {**ckpt["cfg"], "finetuned_model": True, "predictor_class": 5}
    model = load_beats({"cfg": cfg, "model": sd, "label_dict": {0: "a"}})
    assert model.predictor.kernel.shape == (96, 5)
    np.testing.assert_array_equal(np.asarray(model.predictor.bias[...]), 0)


def test_config_from_dict_ignores_unknown_keys():
    cfg = BEATsConfig.from_dict({"encoder_layers": 2, "some_future_key": 1})
    assert cfg.encoder_layers == 2 and cfg.max_distance == 1280 and cfg.embed_dim == 512
    assert cfg.deep_norm_alpha == 1.0
    assert BEATsConfig(deep_norm=True).deep_norm_alpha == pytest.approx(24 ** 0.25)


@pytest.mark.parametrize("kernel,pad", [(8, 4), (7, 3)])
def test_grouped_conv_gradients_equal_autodiff(kernel, pad):
    """The conv positional embedding's hand-written weight gradient (a forward
    convolution, fast on XLA:CPU) equals autodiff of lax.conv_general_dilated."""
    import jax

    from matpac_jax.models.beats_layers import _conv1d, grouped_conv1d

    rng = np.random.default_rng(kernel)
    x = jnp.asarray(rng.standard_normal((3, 11, 12)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((kernel, 3, 12)), jnp.float32)
    out_len = 11 + 2 * pad - kernel + 1
    r = jnp.asarray(rng.standard_normal((3, out_len, 12)), jnp.float32)
    loss = lambda f: lambda x, w: jnp.sum(f(x, w, 4, pad) * r)
    np.testing.assert_allclose(grouped_conv1d(x, w, 4, pad), _conv1d(x, w, 4, pad), atol=1e-6)
    got = jax.jit(jax.grad(loss(grouped_conv1d), argnums=(0, 1)))(x, w)
    want = jax.grad(loss(_conv1d), argnums=(0, 1))(x, w)
    for g, e in zip(got, want):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5)
