"""Linear probe (EVAR protocol) and the `python -m matpac_jax.evaluate` CLI."""
import csv
import json
import os
import pathlib

import numpy as np
import pytest
import soundfile as sf

from matpac_jax import evaluate, inference
from matpac_jax.data import toy_sounds
from matpac_jax.evaluation import linear_probe as lp

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_probe_separates_a_separable_task():
    rng = np.random.default_rng(0)
    c, d = 4, 1024
    means = rng.normal(size=(c, d)) * 0.5
    y = rng.integers(0, c, 1000).astype(np.int32)
    x = (means[y] + rng.normal(size=(1000, d))).astype(np.float32)
    xt, xv, xte = lp.standardize(x[:800], x[800:900], x[900:])
    params, info = lp.train_probe(xt, y[:800], xv, y[800:900], multilabel=False,
                                  num_classes=c, seed=0)
    acc = lp.score(y[900:], np.asarray(lp._predict(params, xte)), False)
    assert acc >= 0.98 and info["valid"] >= 0.98


def test_multilabel_probe_learns():
    rng = np.random.default_rng(1)
    c, d, n = 3, 512, 900
    y = (rng.uniform(size=(n, c)) < 0.4).astype(np.float32)
    x = (y @ rng.normal(size=(c, d)) + rng.normal(size=(n, d))).astype(np.float32)
    xt, xv, xte = lp.standardize(x[:700], x[700:800], x[800:])
    params, _ = lp.train_probe(xt, y[:700], xv, y[700:800], multilabel=True, num_classes=c, seed=0)
    assert lp.score(y[800:], np.asarray(lp._predict(params, xte)), True) > 0.95


def test_average_precision_by_hand():
    # Ranked: 0.8 (+), 0.4 (-), 0.35 (+), 0.1 (-): AP = 0.5 * 1 + 0.5 * 2/3.
    assert lp.average_precision([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(5 / 6)
    # A tie of a positive and a negative counts as one threshold: P = 1/2 at R = 1.
    assert lp.average_precision([1, 0], [0.5, 0.5]) == pytest.approx(0.5)
    y = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    s = np.array([[0.9, 0.1], [0.2, 0.3], [0.1, 0.8], [0.3, 0.2]])
    # class 0: +0.9, -0.3, -0.2, +0.1 -> 1/2 * 1 + 1/2 * 2/4; class 1: +0.8, +0.3 -> 1.
    assert lp.macro_map(y, s) == pytest.approx((0.75 + 1.0) / 2)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_heldout_valid_has_every_class(seed):
    y = np.repeat(np.arange(7), [2, 3, 5, 10, 20, 40, 3]).astype(np.int32)
    train, valid = lp.holdout_valid(y, seed)
    assert set(y[valid]) == set(range(7)) and set(y[train]) == set(range(7))
    assert not set(train) & set(valid) and len(train) + len(valid) == len(y)
    again = lp.holdout_valid(y, seed)
    assert np.array_equal(again[1], valid)
    rng = np.random.default_rng(seed)
    ym = (rng.uniform(size=(200, 12)) < 0.1).astype(np.float32)
    ym[:2, 11] = 1  # a rare class with two clips
    train, valid = lp.holdout_valid(ym, seed)
    present = ym.sum(0) >= 2
    assert (ym[valid].sum(0)[present] > 0).all() and (ym[train].sum(0)[present] > 0).all()


@pytest.fixture(scope="module")
def tiny_task(tmp_path_factory):
    """Two procedural classes, 1-s wavs: 6 train and 3 test clips each, no valid rows."""
    root = tmp_path_factory.mktemp("tiny_task")
    (root / "audio").mkdir()
    rows = []
    for label in ("chirp", "clicks"):
        for i in range(9):
            wave = toy_sounds.synthesize(label, np.random.default_rng([len(label), i]), seconds=1.0)
            rel = f"audio/{label}_{i}.wav"
            sf.write(root / rel, wave, 16000)
            rows.append({"file": rel, "label": label, "split": "train" if i < 6 else "test"})
    with open(root / "meta.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["file", "label", "split"])
        w.writeheader()
        w.writerows(rows)
    return root


def test_cli_writes_schema_and_reuses_cache(tiny_task, fixtures_dir, tmp_path, monkeypatch):
    calls = []
    real_load = inference.load
    monkeypatch.setattr(inference, "load", lambda *a, **k: calls.append(a) or real_load(*a, **k))
    out, cache = tmp_path / "out.json", tmp_path / "cache"
    argv = ["--checkpoint", str(fixtures_dir / "matpac_flat.pt"), "--task", str(tiny_task),
            "--out", str(out), "--cache_dir", str(cache)]
    assert evaluate.main(argv) == 0
    result = json.loads(out.read_text())
    r = result["tasks"]["tiny_task0"]
    assert r["metric"] == "accuracy" and len(r["per_seed"]) == 3
    assert r["mean"] == pytest.approx(np.mean(r["per_seed"]))
    assert r["std"] == pytest.approx(np.std(r["per_seed"]))
    assert r["dim"] == 960 and r["num_test"] == 6
    (cached,) = list(cache.iterdir())
    mtime = cached.stat().st_mtime_ns
    assert len(calls) == 1

    assert evaluate.main(argv) == 0  # second run: embeddings from the cache
    assert len(calls) == 1 and cached.stat().st_mtime_ns == mtime
    assert json.loads(out.read_text())["tasks"] == result["tasks"]


def test_random_init_and_logmel_baseline(tiny_task, tmp_path):
    for extra, dim in [(["--checkpoint", "random-init",
                         "--config", f"{ROOT}/configs/matpac_as2m.py:demo"], 5 * 192),
                       (["--checkpoint", "logmel-baseline", "--lr=3e-5,1e-3"], 160)]:
        out = tmp_path / "out.json"
        assert evaluate.main([*extra, "--task", str(tiny_task), "--out", str(out),
                              "--cache_dir", "", "--seeds", "0"]) == 0
        r = json.loads(out.read_text())["tasks"]["tiny_task0"]
        assert r["dim"] == dim and 0.0 <= r["mean"] <= 1.0 and len(r["per_seed"]) == 1
        assert r["lr"][0] in (3e-5, 1e-3)  # with several --lr: chosen on valid


def test_default_lr_is_the_grid_and_a_probe_at_chance_is_flagged(tiny_task, tmp_path, capsys):
    """The default --lr is the grid picked on valid (EVAR's 3e-5 alone can score chance
    on small tasks). A task whose clips are all the same recording gives every
    clip the same real log-mel features: no probe can beat chance, and it says so."""
    assert evaluate.FLAGS["lr"].default == ["3e-5", "1e-4", "3e-4", "1e-3"]
    root = tmp_path / "same_clip"
    root.mkdir()
    wav = tiny_task / "audio" / "chirp_0.wav"
    rows = [f"{wav},{'ab'[i % 2]},{'train' if i < 12 else 'test'}" for i in range(16)]
    (root / "meta.csv").write_text("file,label,split\n" + "\n".join(rows) + "\n")
    out = tmp_path / "out.json"
    assert evaluate.main(["--checkpoint=logmel-baseline", f"--task={root}", f"--out={out}",
                          "--cache_dir=", "--seeds=0"]) == 0
    result = json.loads(out.read_text())
    assert result["probe"]["lr"] == [3e-5, 1e-4, 3e-4, 1e-3]
    r = result["tasks"]["same_clip"]
    assert r["lr"][0] in result["probe"]["lr"] and r["chance"] == {"valid": [0.5], "test": 0.5}
    assert r["beat_chance"] is False
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert warnings == ["warning: same_clip: the probe did not beat chance: valid 0.500 "
                        "(seed 0, chance 0.500), test 0.500 (seed 0, chance 0.500); try "
                        "other --lr values or check the task"]


def test_random_init_needs_config(tiny_task, tmp_path):
    with pytest.raises(SystemExit, match="--config"):
        evaluate.main(["--checkpoint", "random-init", "--task", str(tiny_task),
                       "--out", str(tmp_path / "o.json")])


def test_logmel_stats_match_frontend(tiny_task):
    from matpac_jax.data import audio, frontends

    f = os.path.join(tiny_task, "audio", "chirp_0.wav")
    mel = frontends.compute("matpac", audio.load_audio(f))
    emb = evaluate.logmel_stats([f])[0]
    np.testing.assert_allclose(emb[:80], mel.mean(1), rtol=1e-5)
    np.testing.assert_allclose(emb[80:], mel.std(1), rtol=1e-5)


def test_plot_curves_from_event_files(tmp_path):
    pytest.importorskip("matplotlib")
    from matpac_jax.evaluation import plot_curves
    from matpac_jax.training import metrics

    for name, scale in (("a", 1.0), ("b", 2.0)):
        writer = metrics.EventWriter(str(tmp_path / name / "tensorboard"))
        for step in (10, 20, 30):
            writer.scalars(step, {"loss": scale / step, "center_entropy": 5.0, "lr": 1e-3})
        writer.close()
    out = tmp_path / "curves.png"
    assert plot_curves.main(["--workdir", str(tmp_path / "a"), "--workdir",
                             f"second={tmp_path / 'b'}", "--out", str(out)]) == 0
    assert out.stat().st_size > 1000
    assert plot_curves.plot(plot_curves.load_runs([str(tmp_path / "a")]), str(out)) == [
        "loss", "center_entropy"]
