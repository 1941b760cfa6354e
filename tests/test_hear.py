"""HEAR 2021 API (matpac_jax.hear): numpy path (CI has no torch), frame_hop_ms, bad input, every
length at every hop and rate, JAX's GPU memory settings; the torch shell where torch is installed
(benchmarks/hear_validate.sh runs the official validator)."""
import ast
import os
import subprocess
import sys

import numpy as np
import pytest
from flax import nnx

from matpac_jax import hear, inference
from matpac_jax.data import frontends
from matpac_jax.models.vit import ViTEncoder

CHECKPOINTS = ("m2d_checkpoint-300.pth", "matpac_flat.pt", "BEATs_small.pt")


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
             (np.zeros((2, 16000), np.int16), "must be float")]
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


@pytest.fixture(scope="module")
def official(fixtures_dir):
    return {name: inference.load(str(fixtures_dir / name)) for name in CHECKPOINTS}


def _short_lengths(rate):
    """Sample counts at `rate` around the 16 kHz boundaries: one sample, MATPAC's
    one 400-sample window, the 50 ms clip of the 40 ms crash, one ViT patch row
    (16 frames: 2,400 samples centred, 2,800 not) and BEATs' 2,800."""
    at_16k = (1, 399, 400, 800, 2399, 2401, 2799, 2800)
    return sorted({1, 2} | {max(1, round(n * rate / 16000)) for n in at_16k})


@pytest.mark.parametrize("rate", hear.SAMPLE_RATES)
@pytest.mark.parametrize("name", CHECKPOINTS)
def test_every_short_length_at_every_hop_and_rate(official, name, rate):
    for hop in hear.FRAME_HOPS_MS:
        model = hear.HearModel(official[name], rate, hop)
        for n in _short_lengths(rate):
            audio = _noise(2, n, seed=n)
            emb, ts = hear.get_timestamp_embeddings(audio, model)
            scene = hear.get_scene_embeddings(audio, model)
            where = f"{name} {n} samples at {rate} Hz, hop {hop} ms"
            assert emb.shape == (2, ts.shape[1], model.timestamp_embedding_size), where
            assert scene.shape == (2, model.scene_embedding_size), where
            assert np.isfinite(emb).all() and np.isfinite(scene).all(), where
            assert ts.shape[1] >= 1 and np.all(ts >= 0), where
            assert np.all(ts <= 1000 * n / rate), (where, ts[0, -1])
            np.testing.assert_allclose(np.diff(ts, axis=1), hop, err_msg=where)


def test_timestamps_stay_inside_the_clip(official):
    # The harness's cases: MATPAC at 1.0 s ended at 1047.5 ms, M2D at 4.0 s at 4075 ms.
    for name, seconds, last in (("matpac_flat.pt", 1.0, 887.5),
                                ("m2d_checkpoint-300.pth", 4.0, 3915.0)):
        model = hear.HearModel(official[name], 16000, 160)
        audio = _noise(1, int(seconds * 16000))
        emb, ts = hear.get_timestamp_embeddings(audio, model)
        assert ts[0, -1] == last and emb.shape[1] == ts.shape[1]
        # the frames kept are the default path's; the scene still uses them all
        frames = official[name].frames(list(audio))[0]
        np.testing.assert_allclose(emb[0], frames[:ts.shape[1]], atol=1e-5)
        assert len(frames) == ts.shape[1] + 1
    # shorter than the first centre (87.5 ms): one frame, at the clip's middle
    model = hear.HearModel(official["matpac_flat.pt"], 16000, 40)
    _, ts = hear.get_timestamp_embeddings(_noise(1, 800), model)
    np.testing.assert_array_equal(ts, [[25.0]])


def test_short_clips_are_zero_padded_to_one_patch(official):
    beats = official["BEATs_small.pt"]
    short = _noise(1, 2799)
    padded = np.pad(short, ((0, 0), (0, 1)))  # 2,800 samples: the 16 frames of one patch
    assert frontends.num_frames("beats", 2799) == 15
    m = hear.HearModel(beats, 16000, 160)
    np.testing.assert_array_equal(m.features(short), m.features(padded))
    np.testing.assert_allclose(hear.get_scene_embeddings(short, m),
                               hear.get_scene_embeddings(padded, m), atol=1e-6)
    # the single-clip path pads the same way
    np.testing.assert_allclose(beats.clip_embeddings([short[0]]),
                               hear.get_scene_embeddings(short, m), atol=1e-5)


_ENV_PROBE = """
import os
from jax._src import xla_bridge
seen = []
xla_bridge.register_backend_initialization_hook(
    lambda backend: seen.append(os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE")))
import {module}
assert not xla_bridge.backends_are_initialized(), "importing {module} started JAX's backend"
import jax.numpy as jnp
jnp.zeros(2).block_until_ready()
print(seen)
"""


@pytest.mark.slow
@pytest.mark.parametrize("module", ["matpac_jax.hear", "matpac_jax.hear_40ms",
                                    "matpac_jax.xares"])
def test_gpu_memory_settings_are_in_place_when_jax_starts(module):
    """Torch harnesses run torch on the GPU JAX would take 75 % of: importing a
    torch-facing module turns preallocation off before the backend starts,
    and leaves a user's own setting alone."""
    def seen_at_backend_start(**env):
        base = {k: v for k, v in os.environ.items() if k != "XLA_PYTHON_CLIENT_PREALLOCATE"}
        out = subprocess.run([sys.executable, "-c", _ENV_PROBE.format(module=module)],
                             env={**base, **env}, capture_output=True, text=True, check=True)
        return ast.literal_eval(out.stdout.strip().splitlines()[-1])

    assert seen_at_backend_start() == ["false"]
    assert seen_at_backend_start(XLA_PYTHON_CLIENT_PREALLOCATE="true") == ["true"]
