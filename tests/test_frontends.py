"""Front ends against the official PyTorch outputs (tests/fixtures/mel_ref.npz)."""

import numpy as np
import pytest

from matpac_jax.data import frontends


@pytest.fixture(scope="module")
def ref(fixtures_dir):
    return np.load(fixtures_dir / "mel_ref.npz")


@pytest.mark.parametrize("name,key", [("matpac", "matpac_logmel"), ("m2d", "m2d_logmel")])
def test_logmel_matches_reference(ref, name, key):
    out = frontends.compute(name, ref["waveform"])
    assert out.dtype == np.float32 and out.shape == ref[key].shape
    np.testing.assert_allclose(out, ref[key], atol=1e-3, rtol=0)


def test_beats_fbank_matches_reference(ref):
    out = frontends.beats_fbank(ref["waveform"])
    assert out.shape == ref["beats_fbank"].shape == (2, 198, 128)
    err = np.abs(out - ref["beats_fbank"])
    assert err.max() < 2e-2 and err.mean() < 1e-4
    normed = frontends.normalize(out, "beats")
    err = np.abs(normed - ref["beats_fbank_normalized"])
    assert err.max() < 2e-2 and err.mean() < 1e-4


@pytest.mark.parametrize("name", sorted(frontends.FRONTENDS))
def test_single_equals_batch_and_frame_count(ref, name):
    wave = ref["waveform"]
    batch = frontends.compute(name, wave)
    np.testing.assert_array_equal(frontends.compute(name, wave[1]), batch[1])
    t_axis = -1 if frontends.FEATURE_LAYOUT[name] == "freq_time" else -2
    assert batch.shape[t_axis] == frontends.num_frames(name, wave.shape[-1])
    # 10 s: 998 frames without centering, 1001 with (docs/SPEC.md section 1).
    assert frontends.num_frames(name, 160000) == (1001 if name == "m2d" else 998)


def test_normalize_constants_and_override():
    x = np.full((80, 3), -7.1, np.float32)
    np.testing.assert_allclose(frontends.normalize(x, "m2d"), 0.0, atol=1e-6)
    np.testing.assert_allclose(frontends.normalize(x + 4.2, "m2d"), 1.0, atol=1e-6)
    np.testing.assert_allclose(frontends.normalize(x, "m2d", stats=(-7.1, 2.1)), 0.0, atol=1e-6)
    np.testing.assert_allclose(
        frontends.normalize(x + 2.1, "m2d", stats=(-7.1, 2.1)), 1.0, atol=1e-6
    )
    np.testing.assert_allclose(
        frontends.normalize(np.float32(15.41663 + 2 * 6.55582), "beats"), 1.0, rtol=1e-6
    )
    np.testing.assert_allclose(frontends.normalize(np.float32(-7.056), "matpac"), 0.0, atol=1e-6)


def test_errors():
    with pytest.raises(ValueError, match="unknown frontend"):
        frontends.compute("mfcc", np.zeros(1000))
    with pytest.raises(ValueError, match="shape"):
        frontends.matpac_logmel(np.zeros((1, 2, 1000)))
    assert frontends.matpac_logmel(np.zeros(399)).shape == (80, 0)
