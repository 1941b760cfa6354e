"""Official M2D / MATPAC files load without torch and reproduce the official outputs."""
import pickle
import zipfile

import jax.numpy as jnp
import numpy as np
import pytest

from matpac_jax.conversion import official, torch_pickle
from matpac_jax.conversion.layout import CheckpointMismatchError


@pytest.fixture(scope="module")
def ref(fixtures_dir):
    d = np.load(fixtures_dir / "m2d_matpac_ref.npz")
    return {k: d[k] for k in d.files}


def test_m2d_training_checkpoint(fixtures_dir, ref):
    m = official.load_official(fixtures_dir / "m2d_checkpoint-300.pth")
    assert m.kind == "m2d" and m.frontend == "m2d"
    assert (m.config["in_freq"], m.config["max_frames"], m.config["depth"], m.config["num_heads"]) == (80, 192, 2, 3)
    assert m.student is not None and m.teacher is not None and m.student.encoder is m.encoder
    np.testing.assert_allclose(m.norm_stats, ref["m2d/norm_stats"], rtol=1e-6)
    np.testing.assert_allclose(m.encoder(jnp.asarray(ref["input"])), ref["encoder_full"], atol=1e-4)


def test_matpac_flat(fixtures_dir, ref):
    m = official.load_official(fixtures_dir / "matpac_flat.pt")
    assert m.kind == "matpac" and m.student is None and m.norm_stats == official.MATPAC_NORM
    np.testing.assert_allclose(m.encoder(jnp.asarray(ref["input"])), ref["encoder_full"], atol=1e-4)


def test_evar_prefix_and_encoder_only(fixtures_dir):
    sd = torch_pickle.load(fixtures_dir / "m2d_checkpoint-300.pth")["model"]
    enc_only = {k: v for k, v in sd.items() if not k.startswith(("decoder", "target", "mask_token"))}
    evar = {"module.ar.runtime.backbone." + k: v for k, v in enc_only.items()}
    evar["module.head.mlp.mlp.0.weight"] = np.zeros((10, 960), np.float32)
    m = official.load_official(evar)
    assert m.student is None and m.config["ignored_keys"] == ["module.head.mlp.mlp.0.weight"]
    assert m.norm_stats == pytest.approx(tuple(sd["norm_stats"]))
    del enc_only["norm_stats"]
    assert official.load_official(enc_only).norm_stats == official.M2D_DEFAULT_NORM


def test_every_problem_in_one_error(fixtures_dir):
    sd = dict(torch_pickle.load(fixtures_dir / "matpac_flat.pt"))
    del sd["student_encoder.blocks.1.norm1.bias"]
    sd["student_encoder.blocks.1.extra.weight"] = np.zeros(3, np.float32)
    sd["student_encoder.blocks.0.mlp.fc2.weight"] = np.zeros((192, 100), np.float32)
    with pytest.raises(CheckpointMismatchError) as e:
        official.load_official(sd)
    assert e.value.missing == ["student_encoder.blocks.1.norm1.bias"]
    assert e.value.unexpected == ["student_encoder.blocks.1.extra.weight"]
    assert [k for k, *_ in e.value.mismatched] == ["student_encoder.blocks.0.mlp.fc2.weight"]
    msg = str(e.value)
    assert all(k in msg for k in ("norm1.bias", "extra.weight", "fc2.weight"))


def test_non_sincos_pos_embed_is_refused(fixtures_dir):
    sd = dict(torch_pickle.load(fixtures_dir / "matpac_flat.pt"))
    sd["pos_embed"] = sd["pos_embed"] + 0.1
    with pytest.raises(CheckpointMismatchError, match="pos_embed"):
        official.load_official(sd)


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_unsafe_pickle_refused(tmp_path):
    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({"model": Evil()}, protocol=2))
        zf.writestr("archive/byteorder", "little")
    with pytest.raises(torch_pickle.UnsafeCheckpointError, match="print"):
        official.load_official(path)


def test_heads(ref):
    head = official.load_heads(ref, "student_head/")
    assert head.last_v.shape == (64, 256)
    with pytest.raises(CheckpointMismatchError):
        official.load_heads({k: v for k, v in ref.items() if k != "student_head/mlp.2.bias"}, "student_head/")
