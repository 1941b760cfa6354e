"""Embedding throughput: XLA:CPU micro-batches give the whole batch's numbers;
benchmarks/compare_torch.py --mode=embed: flag checks (no torch), and on small
random weights in the official layouts, our embeddings and HEAR's against
benchmarks/torch_reference.py's restated official inference paths (needs a
torch Python with nnAudio: $MATPAC_TORCH_PYTHON or the benchmark's venv)."""
import json
import os
import subprocess

import numpy as np
import pytest
from flax import nnx

import matpac_jax
from benchmarks import compare_torch
from matpac_jax import inference
from matpac_jax.models.vit import ViTEncoder


def _small_vit():
    enc = ViTEncoder(dim=64, depth=2, num_heads=2, rngs=nnx.Rngs(0))
    return inference.ViTEmbedder(enc, "matpac", "matpac", None, batch_size=4)


@pytest.mark.parametrize("make", [_small_vit, lambda: matpac_jax.load(
    os.path.join(compare_torch.ROOT, "tests", "fixtures", "BEATs_small.pt"), batch_size=4)],
    ids=["vit", "beats"])
def test_cpu_micro_batches_equal_the_whole_batch(make):
    waves = [(0.1 * np.random.default_rng(i).standard_normal(48000)).astype(np.float32)
             for i in range(3)]  # 3 s each: one padded batch of 4 per time shape
    whole, micro = make(), make()
    whole.cpu_tokens_per_step, micro.cpu_tokens_per_step = 10**9, 1
    shape = (4, *whole.features(waves[0]).shape)
    assert whole._micro_batch(shape) == 4 and micro._micro_batch(shape) == 1
    np.testing.assert_allclose(micro.clip_embeddings(waves), whole.clip_embeddings(waves),
                               rtol=1e-5, atol=1e-5)


def test_embed_mode_refuses_training_methods_and_bad_batches(capsys):
    assert compare_torch.main(["--mode=embed", "--methods=matpac"]) == 2
    assert "known for --mode=embed: ['beats', 'm2d']" in capsys.readouterr().err
    assert compare_torch.main(["--mode=embed", "--batches=0"]) == 2


def _torch_python() -> str:
    python = os.environ.get("MATPAC_TORCH_PYTHON") or os.path.expanduser(
        "~/.cache/matpac_jax/torch-venv/bin/python")
    if not (os.path.exists(python) and compare_torch._imports(python, ["torch", "nnAudio"])):
        pytest.skip("no torch Python with nnAudio ($MATPAC_TORCH_PYTHON or "
                    "~/.cache/matpac_jax/torch-venv): the official paths cannot run")
    return python


@pytest.mark.slow
def test_small_official_checkpoints_embed_as_the_official_paths(tmp_path):
    python = _torch_python()
    out = subprocess.run([python, os.path.join(compare_torch.ROOT, "benchmarks",
                                                "torch_reference.py"), "checkpoints",
                          str(tmp_path), "--dim=64", "--layers=2", "--embed=32"],
                         check=True, capture_output=True, text=True).stdout
    paths = json.loads(out)
    waves = tmp_path / "waves.npy"
    # 7 s: M2D 701 frames = a 608-frame chunk + a 96-frame one (short table, padded bucket)
    np.save(waves, (0.1 * np.random.default_rng(0).standard_normal((2, 112000)))
            .astype(np.float32))
    compare_torch.cli.parse(compare_torch.FLAGS, ["--rounds=1", "--steps=1"],
                            "compare_torch", "")
    for name in ("m2d", "beats"):
        r = compare_torch.compare_embed(name, paths[name], str(waves), 2, python)
        assert r["max_rel_diff"]["ours"] < 1e-4 and r["max_rel_diff"]["hear"] < 1e-4, name
        assert set(r["clips_per_s"]) == {"ours", "torch", "hear"}
        assert len(r["rounds"]) == 1 and len(r["rounds"][0]["torch_s"]) == 1
    report = compare_torch.report_embed(compare_torch.environment(r["torch_info"])
                                        | {"load_at_start": 0.0}, [r], python)
    assert "| beats | 2 |" in report
