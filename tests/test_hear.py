"""HEAR 2021 API (matpac_jax.hear): numpy path (CI has no torch), frame_hop_ms, bad input; the
torch shell where torch is installed (benchmarks/hear_validate.sh runs the official validator)."""
import numpy as np
import pytest
from flax import nnx

from matpac_jax import hear, inference
from matpac_jax.models.vit import ViTEncoder


@pytest.fixture(scope="module")
def vit():
    enc = ViTEncoder(dim=32, depth=1, num_heads=2, rngs=nnx.Rngs(0))  # 80 x 608 geometry
    return inference.ViTEmbedder(enc, "matpac", "matpac", None, batch_size=8)


def _noise(n, samples, seed=0):
    return np.random.default_rng(seed).uniform(-0.5, 0.5, (n, samples)).astype(np.float32)


def test_timestamps_evenly_spaced_at_the_hop_and_native_hop_is_the_default_path(vit):
    audio = _noise(2, 120_000)  # 7.5 s: a full 608-frame chunk and a short one
    native = hear.HearModel(vit, 16000, 160)
    default = vit.frames(list(audio))
    emb, ts = hear.get_timestamp_embeddings(audio, native)
    np.testing.assert_array_equal(emb, np.stack(default))
    assert emb.dtype == ts.dtype == np.float32 and ts.shape == emb.shape[:2] == (2, 47)
    np.testing.assert_allclose(ts[0, :2], [87.5, 247.5])  # centre of frames 0-15: 75 + 12.5 ms
    np.testing.assert_array_equal(hear.get_scene_embeddings(audio, native),
                                  vit.clip_embeddings(list(audio)))

    fine = hear.HearModel(vit, 16000, 40)
    emb40, ts40 = hear.get_timestamp_embeddings(audio, fine)
    assert emb40.shape == (2, 46 * 4 + 1, native.timestamp_embedding_size)
    np.testing.assert_allclose(np.diff(ts40, axis=1), 40.0)
    np.testing.assert_allclose(ts40[:, ::4], ts)
    # every 4th frame is a native one; the others are encoder outputs of the
    # shifted windows: the native path on features advanced by 4, 8, 12 frames
    np.testing.assert_allclose(emb40[:, ::4], emb, atol=1e-5)
    feats = fine.features(audio)
    shifted = vit.frames_of_features([hear._shift(f, 8, 1) for f in feats])
    np.testing.assert_allclose(emb40[:, 2::4], np.stack(shifted)[:, :46], atol=1e-5)
    # the scene embedding does not depend on the hop
    np.testing.assert_allclose(hear.get_scene_embeddings(audio, fine),
                               vit.clip_embeddings(list(audio)), atol=1e-6)


def test_any_supported_rate_is_resampled_and_others_are_named(vit):
    wave16 = _noise(1, 24_000, seed=3)[0]
    for sr in (22050, 44100, 48000):
        m = hear.HearModel(vit, sr, 160)
        from matpac_jax.data import audio as audio_lib

        wave = audio_lib.resample(wave16, 16000, sr)
        batch = np.stack([wave, wave[::-1].copy()])
        got = hear.get_scene_embeddings(batch, m)
        np.testing.assert_allclose(got[0], vit.clip_embeddings([wave], sr=sr)[0], atol=1e-5)
        np.testing.assert_allclose(got[1], vit.clip_embeddings([wave[::-1]], sr=sr)[0], atol=1e-5)
    with pytest.raises(ValueError, match=r"sample_rate=8000 not supported; supported: \(16000, "
                                         r"22050, 32000, 44100, 48000\)"):
        hear.HearModel(vit, 8000, 160)
    with pytest.raises(ValueError, match="frame_hop_ms=50 not supported.*10, 20, 40, 80, 160"):
        hear.HearModel(vit, 16000, 50)


def test_bad_input_is_a_clear_value_error(vit, tmp_path):
    m = hear.HearModel(vit, 16000, 160)
    cases = [(np.zeros(16000, np.float32), r"\(n_sounds, n_samples\), got shape \(16000,\)"),
             (np.zeros((1, 2, 16000), np.float32), r"got shape \(1, 2, 16000\)"),
             (np.zeros((0, 16000), np.float32), "batch is empty"),
             (np.zeros((2, 0), np.float32), "no samples"),
             (np.zeros((2, 16000), np.int16), "must be float"),
             (np.zeros((2, 100), np.float32), "too short for one vit frame: at least 400 samples")]
    nan = np.zeros((3, 16000), np.float32)
    nan[1, 5] = np.nan
    cases.append((nan, r"NaN or inf samples in sounds \[1\]"))
    for audio, message in cases:
        for fn in (hear.get_scene_embeddings, hear.get_timestamp_embeddings):
            with pytest.raises(ValueError, match=message):
                fn(audio, m)
    with pytest.raises(ValueError, match="needs a checkpoint"):
        hear.load_model()
    with pytest.raises(ValueError, match="no such checkpoint"):
        hear.load_model(str(tmp_path / "nothing.pt"))
    with pytest.raises(ValueError, match="from matpac_jax.hear.load_model"):
        hear.get_scene_embeddings(np.zeros((1, 16000), np.float32), vit)


def test_load_model_official_beats_file(fixtures_dir):
    from matpac_jax import hear_40ms  # what hear-validator can load at 40 ms: a path only

    m = hear_40ms.load_model(str(fixtures_dir / "BEATs_small.pt"), sample_rate=32000,
                             torch_module=False)
    assert m.frame_hop_ms == 40
    audio = _noise(3, 2 * 32000 + 17)  # 2 s plus a few samples, at 32 kHz
    emb, ts = hear.get_timestamp_embeddings(audio, m)
    assert emb.shape[0] == 3 and emb.shape[2] == m.timestamp_embedding_size
    np.testing.assert_allclose(np.diff(ts, axis=1), 40.0)
    scene = hear.get_scene_embeddings(audio, m)
    assert scene.shape == (3, m.scene_embedding_size) and np.all(np.isfinite(scene))


def test_torch_shell_takes_and_returns_tensors(fixtures_dir):
    torch = pytest.importorskip("torch")  # the `hear` extra; benchmarks/hear_validate.sh
    m = hear.load_model(str(fixtures_dir / "BEATs_small.pt"), frame_hop_ms=40)
    assert isinstance(m, torch.nn.Module) and m.sample_rate == 16000
    audio = torch.rand((4, 32000)) * 2 - 1
    emb, ts = hear.get_timestamp_embeddings(audio, m)
    scene = hear.get_scene_embeddings(audio, m)
    assert emb.dtype == scene.dtype == torch.float32 and isinstance(ts, torch.Tensor)
    assert emb.shape[:2] == ts.shape and scene.shape == (4, m.scene_embedding_size)
    np.testing.assert_allclose(scene.numpy(), hear.get_scene_embeddings(audio.numpy(), m.core))
