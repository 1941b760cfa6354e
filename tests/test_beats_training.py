"""The whole BEATs chain at demo size, a few steps per stage, through the one loop:
iter1 (random-projection labels) -> tokenizer -> iter2 -> tokenizer."""
import importlib.util
import pathlib

import numpy as np
import pytest

import matpac_jax
from matpac_jax import methods, restore, tokenize
from matpac_jax.data import demo
from matpac_jax.training import metrics, trainer
from matpac_jax.training import step as step_lib

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"


def config(name, **overrides):
    spec = importlib.util.spec_from_file_location(name, CONFIGS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config("demo")
    c.lock()
    c.update({"total_steps": 2, "checkpoint_every": 2, "log_every": 1, "batch_size": 8,
              **overrides})
    c.data.crop_frames = 64
    # Smallest stack that still has every part (compile time dominates here).
    c.model.update({"encoder_layers": 1})
    for key in ("predictor_layers", "estimator_layers"):
        if key in c.objective:
            c.objective[key] = 1
    return c


def train(c, workdir):
    return trainer.train(c, workdir, methods.get(c))


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return demo.ensure_demo_shards(str(tmp_path_factory.mktemp("demo")), "beats", num_clips=16)


@pytest.mark.slow
def test_iterations_chain(shards, tmp_path):
    def run(name, workdir, **overrides):
        c = config(name, **overrides)
        c.data.path = shards
        out = train(c, str(tmp_path / workdir))
        assert restore.latest_checkpoint(str(tmp_path / workdir))[0] == 2
        assert np.isfinite(out["loss"])
        return out, str(tmp_path / workdir)

    out, iter1 = run("beats_iter1_as2m", "iter1")
    assert 0 < out["label_used_codes"] <= 256
    out, tok1 = run("beats_tokenizer_as2m", "tok1", teacher_checkpoint=iter1)
    assert out["perplexity"] > 1 and 0 <= out["dead_codes"] < 256  # codebook usage logged
    scalars = metrics.read_scalars(str(tmp_path / "tok1" / "tensorboard"))
    assert {"perplexity", "dead_codes", "reconstruction", "commitment"} <= set(scalars)
    out, iter2 = run("beats_iter2_as2m", "iter2", tokenizer_checkpoint=tok1)
    # Iteration 3 would be iter2's config and program again, on tok2's labels.
    _, tok2 = run("beats_tokenizer_as2m", "tok2", teacher_checkpoint=iter2)

    # Products of the chain work with the user-facing tools.
    wave = np.random.default_rng(0).standard_normal(16000 * 2).astype(np.float32) * 0.1
    clip = matpac_jax.load(iter1).clip_embeddings([wave])
    width = config("beats_iter1_as2m").model.encoder_embed_dim
    assert clip.shape == (1, width) and np.isfinite(clip).all()
    import soundfile as sf

    sf.write(tmp_path / "a.wav", wave, 16000)
    assert tokenize.main(["--checkpoint", tok2, "--out", str(tmp_path / "t.npz"),
                          str(tmp_path / "a.wav")]) == 0
    labels = np.load(tmp_path / "t.npz")
    assert labels["lengths"].tolist() == [len(labels["labels"])] and labels["labels"].max() < 256


def test_tokenizer_stage_needs_a_teacher(shards, tmp_path):
    c = config("beats_tokenizer_as2m")
    c.data.path = shards
    with pytest.raises(ValueError, match="teacher_checkpoint is required"):
        train(c, str(tmp_path / "wd"))


@pytest.mark.slow
def test_tokenizer_stage_from_official_beats_file(shards, tmp_path, fixtures_dir):
    c = config("beats_tokenizer_as2m", teacher_checkpoint=str(fixtures_dir / "BEATs_small.pt"))
    c.data.path = shards
    out = train(c, str(tmp_path / "wd"))
    assert np.isfinite(out["loss"])
    c.grad_accum_steps, c.batch_size = 2, 16  # the codebook k-means/EMA need the whole batch
    with pytest.raises(ValueError, match="grad_accum_steps=2: not supported by method"):
        step_lib.validate(c, method=methods.get(c))
