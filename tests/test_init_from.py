"""`--config.init_from`: pre-training that starts from an official file or a workdir."""
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

import matpac_jax
from matpac_jax import errors, methods
from matpac_jax import export
from matpac_jax.conversion import torch_pickle, torch_save
from matpac_jax.conversion.official import load_official
from matpac_jax.data import demo
from matpac_jax.methods import init_from
from matpac_jax.models.vit import sincos_pos_table
from matpac_jax import restore
from matpac_jax.training import step as step_lib

from helpers import config, saved_at_start

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _state(module):
    return [np.asarray(x) for x in jax.tree.leaves(nnx.state(module))]


def _equal(a, b):
    return all(np.array_equal(x, y) for x, y in zip(_state(a), _state(b), strict=True))


def _built(c, workdir=None):
    c, pretrained = init_from.resolve(c, workdir)
    method = methods.get(c, pretrained)
    run = step_lib.build(c, method)
    return c, pretrained, method, nnx.merge(run.graphdef, run.state).model


def test_architecture_comes_from_the_file_and_changes_are_listed(fixtures_dir):
    c = config("m2d_as2m", init_from=str(fixtures_dir / "m2d_checkpoint-300.pth"))
    c.model.dim = 768  # whatever the config says, the file decides
    eff, pretrained = init_from.resolve(c)
    m = eff.model
    assert (m.dim, m.depth, m.num_heads, m.pred_dim, m.pred_depth, m.pred_heads) == \
        (192, 2, 3, 128, 2, 4)
    assert "model.dim: 768 -> 192" in pretrained.changed
    assert eff.data.frontend == "m2d" and len(eff.data.norm_stats) == 2
    assert c.model.dim == 768  # the user's config is not modified


@pytest.mark.parametrize("name,cfg,crop", [("m2d_checkpoint-300.pth", "m2d_as2m", 192),
                                           ("matpac_flat.pt", "matpac_as2m", 192),
                                           ("BEATs_small.pt", "beats_iter1_as2m", 64)])
def test_step0_embeddings_are_the_files(fixtures_dir, tmp_path, name, cfg, crop):
    c = config(cfg, init_from=str(fixtures_dir / name), **{"data.crop_frames": crop})
    workdir = saved_at_start(c, tmp_path / "wd")
    rng = np.random.default_rng(1)
    waves = [0.1 * rng.standard_normal(n).astype(np.float32) for n in (16000, 48000)]
    np.testing.assert_allclose(matpac_jax.load(workdir).clip_embeddings(waves),
                               matpac_jax.load(fixtures_dir / name).clip_embeddings(waves),
                               rtol=1e-5, atol=1e-6)


def test_parts_the_file_lacks_keep_the_official_init(fixtures_dir):
    """MATPAC++ from a full M2D file: encoder, teacher and predictor trunk from
    the file; the K output heads, the DINO heads and the center fresh."""
    path = fixtures_dir / "m2d_checkpoint-300.pth"
    c = config("matpacpp_as2m", init_from=str(path), **{"data.crop_frames": 192})
    _, pretrained, _, model = _built(c)
    src = pretrained.parts
    assert _equal(model.student.encoder, src["encoder"])
    assert _equal(model.teacher.stack, src["teacher"])
    assert _equal(model.student.predictor.stack, src["predictor"].stack)
    assert model.student.predictor.pred.kernel.shape[0] > 1  # K hypothesis heads, fresh
    assert float(np.abs(np.asarray(model.center[...])).max()) == 0.0


def test_encoder_only_file_teacher_official_or_student(fixtures_dir):
    path = str(fixtures_dir / "matpac_flat.pt")
    base = dict(init_from=path, **{"data.crop_frames": 192})
    _, pretrained, _, official = _built(config("matpac_as2m", **base))
    # official: the teacher is drawn independently of the student
    assert not _equal(official.teacher.stack, pretrained.parts["encoder"].stack)
    _, pretrained, _, copied = _built(config("matpac_as2m", init_teacher="student", **base))
    assert _equal(copied.teacher.stack, pretrained.parts["encoder"].stack)
    assert _equal(copied.teacher.head, copied.student.head)


def test_a_matpac_workdir_gives_heads_teacher_and_center(tmp_path):
    tiny = {"model.dim": 32, "model.depth": 1, "model.num_heads": 2, "model.pred_dim": 32,
            "model.pred_depth": 1, "model.pred_heads": 2, "model.head_out_dim": 32,
            "model.head_hidden_dim": 32, "model.head_bottleneck_dim": 16,
            "data.crop_frames": 64}
    def edit(model):  # a center that is not the fresh zeros
        model.center.set_value(np.full(model.center.shape, 1 / 32, np.float32))

    source = saved_at_start(config("matpac_as2m", **tiny), tmp_path / "a", edit=edit)
    _, old, _ = methods.load_workdir(source)
    c = config("matpacpp_as2m", init_from=source, **{"data.crop_frames": 64})
    c.model.head_out_dim = 64  # replaced by the file's 32, like the encoder fields
    _, pretrained, _, model = _built(c)
    assert "model.head_out_dim: 64 -> 32" in pretrained.changed
    assert _equal(model.student.head, old.student.head)
    assert _equal(model.teacher.head, old.teacher.head)
    assert _equal(model.teacher.stack, old.teacher.stack)
    np.testing.assert_array_equal(model.center[...], old.center[...])
    assert float(old.center[...][0, 0, 0]) == 1 / 32


def test_a_tokenizer_workdir_starts_a_tokenizer_run(fixtures_dir, tmp_path):
    teacher = str(fixtures_dir / "BEATs_small.pt")
    small = {"teacher_checkpoint": teacher, "data.crop_frames": 64}
    source = saved_at_start(config("beats_tokenizer_as2m", **small,
                                   init_from=str(fixtures_dir / "Tokenizer_small.pt")),
                            tmp_path / "tok")
    old_method, old, _ = methods.load_workdir(source)
    _, pretrained, method, model = _built(config("beats_tokenizer_as2m", **small,
                                                 init_from=source))
    assert pretrained.family == "beats_tokenizer"
    assert _equal(method.encoder(model), old_method.encoder(old))


def test_files_of_another_method_are_refused_before_anything_is_built(fixtures_dir, tmp_path):
    cases = [("m2d_as2m", "BEATs_small.pt", "official BEATs checkpoint"),
             ("matpac_as2m", "Tokenizer_small.pt", "tokenizer"),
             ("beats_iter1_as2m", "m2d_checkpoint-300.pth", "official M2D checkpoint"),
             ("beats_iter1_as2m", "Tokenizer_small.pt", "takes a beats checkpoint"),
             ("beats_tokenizer_as2m", "BEATs_small.pt", "takes a beats_tokenizer")]
    for cfg, name, says in cases:
        with pytest.raises(errors.ConfigError, match=says):
            init_from.resolve(config(cfg, init_from=str(fixtures_dir / name)))
    with pytest.raises(errors.ConfigError, match="no such file"):
        init_from.resolve(config("m2d_as2m", init_from=str(tmp_path / "missing.pth")))
    with pytest.raises(errors.ConfigError, match="init_teacher"):
        init_from.resolve(config("m2d_as2m", init_from=str(fixtures_dir / "matpac_flat.pt"),
                                 init_teacher="teacher"))


def test_a_shape_the_method_cannot_take_lists_every_problem(fixtures_dir, tmp_path):
    sd = torch_pickle.load(fixtures_dir / "matpac_flat.pt")
    sd["pos_embed"] = sincos_pos_table(8, 12, 192)[None]  # 128 mel bins x 192 frames
    path = torch_save.save(sd, tmp_path / "matpac_128bins.pt")
    c = config("matpac_as2m", init_from=path, **{"data.crop_frames": 100})
    with pytest.raises(errors.ConfigError) as e:
        init_from.resolve(c)
    assert "128 mel bins" in str(e.value) and "crop_frames=100" in str(e.value)


@pytest.fixture(scope="module")
def m2d_shards(tmp_path_factory):
    return demo.ensure_demo_shards(str(tmp_path_factory.mktemp("demo")), "m2d", num_clips=16)


def _main(workdir, shards, init, steps):
    cmd = [sys.executable, "-m", "matpac_jax.main",
           f"--config={ROOT / 'configs' / 'm2d_x_further.py'}:demo", f"--workdir={workdir}",
           f"--config.init_from={init}", f"--config.data.path={shards}",
           "--config.data.crop_frames=64", "--config.batch_size=8", f"--config.total_steps={steps}",
           "--config.checkpoint_every=2", "--config.log_every=1", "--config.opt.warmup_steps=1"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.slow
def test_further_pretraining_resumes_without_the_file_and_exports(fixtures_dir, m2d_shards,
                                                                  tmp_path):
    init = tmp_path / "m2d_checkpoint-300.pth"
    shutil.copy(fixtures_dir / "m2d_checkpoint-300.pth", init)
    workdir = tmp_path / "m2d_x"
    first = _main(workdir, m2d_shards, init, steps=2)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "model.depth: 4 -> 2" in first.stderr  # the demo config's 4 layers -> the file's 2
    assert "student encoder: from the file" in first.stderr
    assert "teacher: from the file" in first.stderr
    os.remove(init)  # a re-run resumes from the workdir and never reads the file
    again = _main(workdir, m2d_shards, init, steps=3)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "is not read" in again.stderr and "Resuming from step 2" in again.stderr
    assert restore.latest_checkpoint(str(workdir))[0] == 3
    # The trained workdir exported for PyTorch users gives its embeddings back.
    done = export.export(workdir, tmp_path / "out" / "checkpoint-3.pth")
    assert done.step == 3 and torch_pickle.load(done.path)["epoch"] == 3
    _, trained, _ = methods.load_workdir(workdir)
    back = load_official(done.path)  # every tensor read back bit for bit
    assert _equal(back.encoder, trained.student.encoder)
    assert _equal(back.student.predictor, trained.student.predictor)
    assert _equal(back.teacher.stack, trained.teacher.stack)
    rng = np.random.default_rng(2)
    waves = [0.1 * rng.standard_normal(24000).astype(np.float32)]
    np.testing.assert_allclose(matpac_jax.load(done.path).clip_embeddings(waves),
                               matpac_jax.load(workdir).clip_embeddings(waves),
                               rtol=1e-5, atol=1e-6)
