"""Embeddings API and CLI (docs/SPEC.md section 6): chunking, frame counts, resampling, dispatch."""
import numpy as np
import jax.numpy as jnp
import pytest
import soundfile as sf
from flax import nnx

import matpac_jax
from matpac_jax import embed, inference
from matpac_jax.data import audio, frontends
from matpac_jax.models.vit import ViTEncoder


@pytest.fixture(scope="module")
def small():
    """A small MATPAC-geometry (80 x 608) encoder: fast, same chunking as ViT-B."""
    enc = ViTEncoder(dim=64, depth=2, num_heads=2, rngs=nnx.Rngs(0))
    return inference.ViTEmbedder(enc, "matpac", "matpac", None, batch_size=4)


def _noise(seconds, sr=16000, seed=0):
    return (np.random.default_rng(seed).standard_normal(int(seconds * sr)) * 0.1).astype(np.float32)


def test_chunked_batches_equal_chunk_by_chunk_calls(small):
    wave = _noise(15)
    frames, ts = small.frame_embeddings(wave)
    feat = frontends.normalize(frontends.matpac_logmel(wave), "matpac")
    feat = np.pad(feat, ((0, 0), (0, -feat.shape[1] % 16)))  # 1498 -> 1504 frames
    ref = []
    for c in range(0, feat.shape[1], 608):  # 608 + 608 + 288 (time-truncated table)
        out = np.asarray(small.model(jnp.asarray(feat[None, :, c:c + 608])))[0, 1:]
        t = out.shape[0] // 5
        ref.append(out.reshape(5, t, 64).transpose(1, 0, 2).reshape(t, 5 * 64))
    ref = np.concatenate(ref)
    assert frames.shape == ref.shape == (94, 320)
    np.testing.assert_allclose(frames, ref, atol=1e-4)
    np.testing.assert_allclose(ts[:3], [0.0, 0.16, 0.32], atol=1e-6)
    # batching several inputs of different lengths gives the same per-input result
    clips = small.clip_embeddings([_noise(3, seed=1), wave, _noise(0.5, seed=2)])
    np.testing.assert_allclose(clips[1], ref.mean(0), atol=1e-4)


def test_ten_seconds_is_63_steps(small):
    # MATPAC: 1 + (160000 - 400) // 160 = 998 frames -> padded to 1008 = 63 * 16
    # -> chunks of 608 + 400 frames = 38 + 25 = 63 steps of 160 ms.
    assert small.frame_embeddings(_noise(10))[0].shape == (63, 5 * 64)
    # M2D (centered): 1 + 160000 // 160 = 1001 frames -> 1008 -> also 63 steps.
    m2d = inference.ViTEmbedder(small.model, "m2d", "m2d", (-7.1, 4.2))
    assert m2d.frame_embeddings(_noise(10))[0].shape == (63, 5 * 64)


def test_freq_tokens_mean_is_the_768d_variant(small):
    wave = _noise(4, seed=4)
    concat = small.frame_embeddings(wave)[0]
    mean = inference.ViTEmbedder(small.model, "matpac", "matpac", None, batch_size=4,
                              freq_tokens="mean").frame_embeddings(wave)[0]
    assert concat.shape == (25, 5 * 64) and mean.shape == (25, 64)
    np.testing.assert_allclose(mean, concat.reshape(25, 5, 64).mean(1), atol=1e-6)
    with pytest.raises(ValueError, match="freq_tokens"):
        inference.ViTEmbedder(small.model, "matpac", "matpac", None, freq_tokens="sum")


def test_any_sample_rate(small):
    w44 = _noise(3, sr=44100, seed=3)
    a = small.clip_embeddings([w44], sr=44100)
    b = small.clip_embeddings([audio.resample(w44, 44100, 16000)])
    np.testing.assert_array_equal(a, b)
    # 3 s -> 1 + (48000 - 400) // 160 = 298 frames -> 304 -> 19 steps
    assert small.frame_embeddings(w44, sr=44100)[0].shape[0] == 19


def test_fixture_model_matches_official_clip_embedding(fixtures_dir):
    ref = np.load(fixtures_dir / "m2d_matpac_ref.npz")
    wave = np.load(fixtures_dir / "mel_ref.npz")["waveform"]
    e = matpac_jax.load(fixtures_dir / "matpac_flat.pt")
    # the fixture input is the first 192 MATPAC frames: 400 + 191 * 160 samples
    clips = e.clip_embeddings(list(wave[:, :400 + 191 * 160]))
    np.testing.assert_allclose(clips, ref["clip_embedding"], atol=2e-3)
    full = e.clip_embeddings(list(wave))
    assert full.dtype == np.float32 and full.shape == (2, 960) and np.isfinite(full).all()
    np.testing.assert_array_equal(full, e.clip_embeddings(list(wave)))


def test_cli_writes_in_input_order(fixtures_dir, tmp_path):
    files = []
    for i, sec in enumerate([1.0, 2.3, 0.7]):
        files.append(str(tmp_path / f"clip{i}.wav"))
        sf.write(files[-1], _noise(sec, sr=22050, seed=i), 22050)
    out = tmp_path / "emb.npz"
    ckpt = fixtures_dir / "matpac_flat.pt"
    assert embed.main(["--checkpoint", str(ckpt), "--out", str(out), *files[::-1]]) == 0
    got = np.load(out)
    assert list(got["files"]) == files[::-1] and got["clip"].dtype == np.float32
    e = matpac_jax.load(ckpt)
    for row, f in zip(got["clip"], files[::-1]):
        np.testing.assert_allclose(row, e.clip_embeddings([f])[0], atol=1e-5)


def test_beats_dispatch(fixtures_dir):
    ref = np.load(fixtures_dir / "beats_ref.npz")
    e = matpac_jax.load(fixtures_dir / "BEATs_small.pt")
    assert isinstance(e, inference.BEATsEmbedder) and e.method == "beats"
    clips = e.clip_embeddings(list(ref["waveform"]))
    np.testing.assert_allclose(clips, ref["features"].mean(1), atol=5e-3)
    # concatenated frequency patches: time-major (t f) patches -> frames of 8 * D
    cat = matpac_jax.load(fixtures_dir / "BEATs_small.pt", freq_tokens="concat")
    n, d = ref["features"].shape[1:]
    want = ref["features"].reshape(-1, n // 8, 8 * d).mean(1)
    np.testing.assert_allclose(cat.clip_embeddings(list(ref["waveform"])), want, atol=5e-3)


def test_workdir_without_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="no checkpoint found"):
        matpac_jax.load(tmp_path)
