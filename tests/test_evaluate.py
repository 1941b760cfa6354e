"""Linear probe (EVAR protocol), its folds and crops, and the `python -m matpac_jax.evaluate` CLI."""
import json
import math
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

import replicas
from matpac_jax import evaluate, inference
from matpac_jax.evaluation import datasets, embeddings, protocol, runner, tasks
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
    acc = lp.score(y[900:], np.asarray(lp.predict(params, xte)), False)
    assert acc >= 0.98 and info["valid"] >= 0.98


def test_multilabel_probe_learns():
    rng = np.random.default_rng(1)
    c, d, n = 3, 512, 900
    y = (rng.uniform(size=(n, c)) < 0.4).astype(np.float32)
    x = (y @ rng.normal(size=(c, d)) + rng.normal(size=(n, d))).astype(np.float32)
    xt, xv, xte = lp.standardize(x[:700], x[700:800], x[800:])
    params, _ = lp.train_probe(xt, y[:700], xv, y[700:800], multilabel=True, num_classes=c, seed=0)
    assert lp.score(y[800:], np.asarray(lp.predict(params, xte)), True) > 0.95


def test_average_precision_by_hand():
    # Ranked: 0.8 (+), 0.4 (-), 0.35 (+), 0.1 (-): AP = 0.5 * 1 + 0.5 * 2/3.
    assert lp.average_precision([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(5 / 6)
    # A tie of a positive and a negative counts as one threshold: P = 1/2 at R = 1.
    assert lp.average_precision([1, 0], [0.5, 0.5]) == pytest.approx(0.5)
    y = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    s = np.array([[0.9, 0.1], [0.2, 0.3], [0.1, 0.8], [0.3, 0.2]])
    # class 0: +0.9, -0.3, -0.2, +0.1 -> 1/2 * 1 + 1/2 * 2/4; class 1: +0.8, +0.3 -> 1.
    assert lp.macro_map(y, s) == pytest.approx((0.75 + 1.0) / 2)
    # Unknown entries leave the ranking: class 0 without clip 3 (the -0.3): +0.9, -0.2,
    # +0.1 -> 1/2 * 1 + 1/2 * 2/3.
    known = np.array([[1, 1], [1, 1], [1, 1], [0, 1]], bool)
    assert lp.macro_map(y, s, known) == pytest.approx((5 / 6 + 1.0) / 2)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_heldout_valid_has_every_class(seed):
    y = np.repeat(np.arange(7), [2, 3, 5, 10, 20, 40, 3]).astype(np.int32)
    train, valid = protocol.holdout_valid(y, seed)
    assert set(y[valid]) == set(range(7)) and set(y[train]) == set(range(7))
    assert not set(train) & set(valid) and len(train) + len(valid) == len(y)
    again = protocol.holdout_valid(y, seed)
    assert np.array_equal(again[1], valid)
    rng = np.random.default_rng(seed)
    ym = (rng.uniform(size=(200, 12)) < 0.1).astype(np.float32)
    ym[:2, 11] = 1  # a rare class with two clips
    train, valid = protocol.holdout_valid(ym, seed)
    present = ym.sum(0) >= 2
    assert (ym[valid].sum(0)[present] > 0).all() and (ym[train].sum(0)[present] > 0).all()


@pytest.mark.parametrize("seed", [42, 43])
def test_evar_valid_is_a_random_tenth_holding_every_class(seed):
    """EVAR's train_test_sure_split: ceil(0.1 n) random clips, redrawn until every class
    of train is in valid (single- and multi-label; unknown entries do not count)."""
    y = np.repeat(np.arange(5), [3, 4, 10, 30, 50]).astype(np.int32)
    train, valid = protocol.evar_valid(y, [seed, 1])
    assert len(valid) == math.ceil(0.1 * len(y)) and set(y[valid]) == set(range(5))
    assert np.array_equal(np.sort(np.r_[train, valid]), np.arange(len(y)))
    assert np.array_equal(protocol.evar_valid(y, [seed, 1])[1], valid)
    assert not np.array_equal(protocol.evar_valid(y, [seed, 2])[1], valid)
    ym = np.zeros((60, 3), np.float32)
    ym[np.arange(60), np.arange(60) % 3] = 1
    known = np.ones_like(ym, bool)
    known[:, 2] = np.arange(60) < 6  # class 2 is known (and positive) on two clips only
    _, valid = protocol.evar_valid(ym, seed, known)
    assert len(valid) == 6 and (ym[valid] * known[valid]).sum(0).min() >= 1
    with pytest.raises(ValueError, match="too small"):
        protocol.evar_valid(np.arange(10) % 5, seed)  # one valid clip cannot hold 5 classes


# -- the probe against a restatement of EVAR's ---------------------------------
def evar_probe_restated(x_fit, y_fit, valid, x_test, y_test, *, seed, lr, multilabel,
                        num_classes, epochs=200, patience=20):
    """TorchMLPClassifier2(hidden_layer_sizes=()).fit(X, y, val_idxs=valid) + score, in
    numpy: StandardScaler on all of X; torch Linear (init and epoch shuffles drawn as
    train_probe draws them); `-mean(onehot * log_softmax)` or BCE; torch Adam with
    coupled weight decay 1e-8; EarlyStopping(patience) on valid accuracy / mAP with >=."""
    from sklearn.metrics import average_precision_score

    mean, std = x_fit.mean(0, dtype=np.float64), x_fit.std(0, dtype=np.float64)
    std[std == 0] = 1
    xs = ((x_fit - mean) / std).astype(np.float32)
    xt = ((x_test - mean) / std).astype(np.float32)
    is_valid = np.isin(np.arange(len(xs)), valid)
    x, y, xv, yv = xs[~is_valid], y_fit[~is_valid], xs[is_valid], y_fit[is_valid]
    params, key = lp.init_params(seed, x.shape[1], num_classes)
    p = {k: np.array(v) for k, v in params.items()}
    m1 = {k: np.zeros_like(v) for k, v in p.items()}
    m2 = {k: np.zeros_like(v) for k, v in p.items()}
    onehot = lambda t: np.eye(num_classes, dtype=np.float32)[t]
    sigmoid = lambda z: 1 / (1 + np.exp(-z))

    def metric(xx, yy, w):
        z = xx @ w["w"] + w["b"]
        if not multilabel:
            return float(np.mean(z.argmax(1) == yy))
        keep = yy.sum(0) > 0
        return float(np.mean(average_precision_score(yy[:, keep], sigmoid(z)[:, keep],
                                                     average=None)))

    n, bs, t = len(x), min(200, len(x_fit)), 0
    best, best_w, wait, ran = 0.0, None, 0, 0
    for epoch in range(epochs):
        key, sub = jax.random.split(key)
        perm = np.asarray(jax.random.permutation(sub, n))
        for s in range(0, n, bs):
            i = perm[s:s + bs]
            z = x[i] @ p["w"] + p["b"]
            if multilabel:
                g = (sigmoid(z) - y[i]) / z.size
            else:
                e = np.exp(z - z.max(1, keepdims=True))
                g = (e / e.sum(1, keepdims=True) - onehot(y[i])) / z.size
            grads = {"w": x[i].T @ g, "b": g.sum(0)}
            t += 1
            for k in p:
                gk = grads[k] + 1e-8 * p[k]
                m1[k] = 0.9 * m1[k] + 0.1 * gk
                m2[k] = 0.999 * m2[k] + 0.001 * gk * gk
                p[k] = p[k] - lr * (m1[k] / (1 - 0.9 ** t)) / (
                    np.sqrt(m2[k] / (1 - 0.999 ** t)) + 1e-8)
        ran = epoch + 1
        val = metric(xv, yv, p)
        if val >= best:
            best, best_w, wait = val, {k: v.copy() for k, v in p.items()}, 1
        else:
            if wait >= patience:
                break
            wait += 1
    return metric(xt, y_test, best_w), best, ran


@pytest.mark.parametrize("multilabel", [False, True])
def test_probe_matches_a_restatement_of_evars_probe(multilabel):
    """Three folds x two seeds on fixed embeddings: our runner (EVAR's valid draw, the
    scaler fit before it, the jitted probe) and the numpy restatement of EVAR's probe
    on the same split reach the same valid score, stopping epoch and test score."""
    pytest.importorskip("sklearn")
    rng = np.random.default_rng(7)
    n, d, c, lr = 150, 64, 3, 3e-3  # weak signal in 64 dims: the probe overfits and stops
    if multilabel:
        y = (rng.uniform(size=(n, c)) < 0.35).astype(np.float32)
        y[np.arange(n), np.arange(n) % c] = 1
        x = y @ rng.normal(size=(c, d)) * 0.2 + rng.normal(size=(n, d))
        labels = [[str(k) for k in np.flatnonzero(r)] for r in y]
    else:
        y = (np.arange(n) % c).astype(np.int32)
        x = rng.normal(size=(c, d))[y] * 0.2 + rng.normal(size=(n, d))
        labels = [[str(k)] for k in y]
    fold = np.random.default_rng(0).permutation(np.arange(n) % 3) + 1
    task = tasks.make("t", [f"{i}.wav" for i in range(n)], labels, fold=fold, source="t",
                      kind="esc50", multilabel=multilabel, classes=["0", "1", "2"])
    plan = protocol.for_task(task, lrs=(lr,), seeds=(42, 43))
    x = x.astype(np.float32)
    result = runner.run(embeddings.Embedded.whole(x), task, plan)
    assert [f["test_fold"] for f in result["folds"]] == [1, 2, 3]
    for f in result["folds"]:
        train = np.flatnonzero(fold != f["test_fold"])
        test = np.flatnonzero(fold == f["test_fold"])
        assert (f["n_train"] + f["n_valid"], f["n_test"]) == (len(train), len(test))
        for k, seed in enumerate(plan.seeds):
            _, valid = protocol.evar_valid(y[train], [seed, f["test_fold"]])
            test_score, best, ran = evar_probe_restated(
                x[train], y[train], valid, x[test], y[test], seed=seed, lr=lr,
                multilabel=multilabel, num_classes=c)
            assert f["valid"][k] == pytest.approx(best, abs=1e-6)
            assert f["epochs"][k] == ran
            assert f["per_seed"][k] == pytest.approx(test_score, abs=1e-6)
    epochs = [e for f in result["folds"] for e in f["epochs"]]
    assert min(epochs) < 100 and max(epochs) > min(epochs) + 20  # early stopping at work
    per_seed = np.mean([f["per_seed"] for f in result["folds"]], axis=0)
    assert result["mean"] == pytest.approx(np.mean([f["score"] for f in result["folds"]]))
    assert result["std"] == pytest.approx(np.std(per_seed))


def test_unknown_labels_count_in_neither_loss_nor_score():
    """OpenMIC's unannotated instrument/clip pairs: whatever value they hold, the probe
    and its score are the same."""
    rng = np.random.default_rng(3)
    n, d, c = 120, 8, 3
    y = (rng.uniform(size=(n, c)) < 0.5).astype(np.float32)
    x = (y @ rng.normal(size=(c, d)) + rng.normal(size=(n, d))).astype(np.float32)
    known = rng.uniform(size=(n, c)) < 0.7
    flipped = np.where(known, y, 1 - y)
    runs = [lp.train_probe(x[:100], t[:100], x[100:], t[100:], multilabel=True, num_classes=c,
                           seed=0, cfg=lp.ProbeConfig(lr=1e-3, epochs=30),
                           known_train=known[:100], known_valid=known[100:])
            for t in (y, flipped)]
    np.testing.assert_array_equal(runs[0][0]["w"], runs[1][0]["w"])
    assert runs[0][1] == runs[1][1]


# -- one embedding pass, crops, folds --------------------------------------------
@pytest.fixture(scope="module")
def crop_task(tmp_path_factory):
    """Six clips in three folds, as ESC-50 (5-s crops): two of 6.5 s, four of 3 s."""
    root = tmp_path_factory.mktemp("crops")
    files = []
    for i in range(6):
        replicas.write(root / f"{i}.wav", i % 2, 6.5 if i in (1, 4) else 3.0, seed=i)
        files.append(str(root / f"{i}.wav"))
    return tasks.make("crops", files, [[str(i % 2)] for i in range(6)], fold=[1, 1, 2, 2, 3, 3],
                      source=str(root), kind="esc50")


def test_one_embedding_pass_cuts_evars_crops(crop_task):
    """Every clip is embedded once per distinct crop it needs: from the start (its test
    fold) and at a random offset drawn from (seed 42, clip) (the other folds); a clip
    shorter than the crop is zero-padded and embedded once."""
    from matpac_jax.data import audio

    plan = protocol.for_task(crop_task)
    assert plan.unit_sec == 5.0 and plan.seeds == (42, 43, 44) and plan.lrs == (3e-5,)
    seen = []

    def embed(waves):
        seen.extend(waves)
        return np.stack([[len(seen) - len(waves) + k] for k in range(len(waves))]).astype(float)

    emb = embeddings.embed_task(embed, crop_task, plan, threads=2)
    assert len(seen) == 6 + 2 and {len(w) for w in seen} == {80000}
    for i, f in enumerate(crop_task.files):
        wave = audio.load_audio(f)
        start, rand = seen[emb.start_row[i]], seen[emb.random_row[i]]
        np.testing.assert_array_equal(start[:min(len(wave), 80000)], wave[:80000])
        if len(wave) <= 80000:
            assert emb.start_row[i] == emb.random_row[i] and not start[len(wave):].any()
        else:
            off = protocol.random_offset(len(wave), 80000, 42, i)
            assert 0 < off < len(wave) - 80000 and emb.start_row[i] != emb.random_row[i]
            np.testing.assert_array_equal(rand, wave[off:off + 80000])
    assert np.array_equal(emb.rows(np.array([1, 4]), "test")[:, 0], emb.start_row[[1, 4]])


def test_split_tasks_cut_train_at_random_and_test_from_the_start(tmp_path):
    made = replicas.cremad(tmp_path / "cremad", seconds=3.0)
    task = datasets.parse(f"cremad:{tmp_path / 'cremad'}")
    seen = []
    emb = embeddings.embed_task(lambda w: seen.extend(w) or np.zeros((len(w), 1)), task,
                                protocol.for_task(task), threads=1)
    assert len(seen) == len(task.files) == len(made) and {len(w) for w in seen} == {40000}
    test = task.split == "test"
    assert (emb.random_row[test] == -1).all() and (emb.start_row[~test] == -1).all()


def test_folds_each_report_their_own_clips():
    """Every fold keeps its own entry: its test clips, and train less the drawn valid."""
    fold = np.repeat([1, 2, 3, 4], [10, 12, 8, 10])
    y = np.arange(40) % 2
    task = tasks.make("f", [f"{i}.wav" for i in range(40)], [[str(k)] for k in y], fold=fold,
                      source="f", kind="us8k")
    x = np.random.default_rng(0).normal(size=(40, 4)).astype(np.float32) + y[:, None]
    r = runner.run(embeddings.Embedded.whole(x), task, protocol.for_task(task, seeds=(42,)))
    assert [(f["test_fold"], f["n_train"], f["n_valid"], f["n_test"]) for f in r["folds"]] == \
        [(1, 27, 3, 10), (2, 25, 3, 12), (3, 28, 4, 8), (4, 27, 3, 10)]
    assert r["protocol"]["folds"] == 4 and r["protocol"]["unit_sec"] == 4.0


# -- the CLI ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_task(tmp_path_factory):
    """Two procedural classes, 1-s wavs: 6 train and 3 test clips each, no valid rows."""
    root = tmp_path_factory.mktemp("tiny_task")
    replicas.folder(root)
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
    (fold,) = r["folds"]
    assert fold["test_fold"] is None and (fold["n_train"], fold["n_valid"], fold["n_test"]) == \
        (10, 2, 6)
    assert r["dim"] == 960 and r["protocol"]["name"] == "folder"
    assert r["protocol"]["seeds"] == [0, 1, 2] and r["protocol"]["unit_sec"] is None
    (cached,) = list(cache.iterdir())
    mtime = cached.stat().st_mtime_ns
    assert len(calls) == 1

    assert evaluate.main(argv) == 0  # second run: embeddings from the cache
    assert len(calls) == 1 and cached.stat().st_mtime_ns == mtime
    assert json.loads(out.read_text())["tasks"] == result["tasks"]
    assert "| tiny_task0 | accuracy |" in (tmp_path / "out.md").read_text()


def test_random_init_and_logmel_baseline(tiny_task, tmp_path):
    for extra, dim in [(["--checkpoint", "random-init",
                         "--config", f"{ROOT}/configs/matpac_as2m.py:demo"], 5 * 192),
                       (["--checkpoint", "logmel-baseline", "--lr=3e-5,1e-3"], 160)]:
        out = tmp_path / "out.json"
        assert evaluate.main([*extra, "--task", str(tiny_task), "--out", str(out),
                              "--cache_dir", "", "--seeds", "0"]) == 0
        r = json.loads(out.read_text())["tasks"]["tiny_task0"]
        assert r["dim"] == dim and 0.0 <= r["mean"] <= 1.0 and len(r["per_seed"]) == 1
        assert r["folds"][0]["lr"][0] in (3e-5, 1e-3)  # with several --lr: chosen on valid


def test_folder_default_lr_is_the_grid_and_a_probe_at_chance_is_flagged(tiny_task, tmp_path,
                                                                         capsys):
    """A meta.csv folder defaults to the lr grid picked on valid (EVAR's 3e-5 alone can
    score chance on small tasks), and the output names it. A task whose clips are all
    the same recording gives every clip the same features: no probe can beat chance,
    and it says so."""
    root = tmp_path / "same_clip"
    root.mkdir()
    wav = tiny_task / "audio" / "chirp_0.wav"
    rows = [f"{wav},{'ab'[i % 2]},{'train' if i < 12 else 'test'}" for i in range(16)]
    (root / "meta.csv").write_text("file,label,split\n" + "\n".join(rows) + "\n")
    out = tmp_path / "out.json"
    assert evaluate.main(["--checkpoint=logmel-baseline", f"--task={root}", f"--out={out}",
                          "--cache_dir=", "--seeds=0"]) == 0
    r = json.loads(out.read_text())["tasks"]["same_clip"]
    assert r["protocol"]["lr_grid"] == [3e-5, 1e-4, 3e-4, 1e-3] and "lr" not in r["protocol"]
    assert "picked on valid" in r["protocol"]["lr_selection"]
    (fold,) = r["folds"]
    assert fold["lr"][0] in r["protocol"]["lr_grid"]
    assert fold["chance"] == {"valid": [0.5], "test": 0.5} and r["beat_chance"] is False
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert warnings == ["warning: same_clip: the probe did not beat chance: valid 0.500 "
                        "(seed 0, chance 0.500), test 0.500 (seed 0, chance 0.500); try "
                        "other --lr values or check the task"]


def test_cli_refuses_what_it_cannot_run(tiny_task, tmp_path, capsys):
    out = str(tmp_path / "o.json")
    with pytest.raises(SystemExit, match="--config"):
        evaluate.main(["--checkpoint", "random-init", "--task", str(tiny_task), "--out", out])
    assert evaluate.main(["--checkpoint=logmel-baseline", f"--out={out}"]) == 2
    assert evaluate.main(["--checkpoint=logmel-baseline", "--suite=evar", f"--out={out}"]) == 2
    assert "--suite and --data_root" in capsys.readouterr().err
    with pytest.raises(ValueError, match="two tasks named"):
        evaluate.main(["--checkpoint=logmel-baseline", f"--task={tiny_task}",
                       f"--task={tiny_task}", f"--out={out}"])


def test_logmel_stats_match_frontend(tiny_task):
    from matpac_jax.data import audio, frontends

    f = os.path.join(tiny_task, "audio", "chirp_0.wav")
    mel = frontends.compute("matpac", audio.load_audio(f))
    emb = evaluate.logmel_stats([f])[0]
    np.testing.assert_allclose(emb[:80], mel.mean(1), rtol=1e-5)
    np.testing.assert_allclose(emb[80:], mel.std(1), rtol=1e-5)


def run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "matpac_jax.evaluate", *args],
                          capture_output=True, text=True, timeout=600, env=os.environ.copy())


@pytest.mark.slow
def test_cli_named_task_as_released(fixtures_dir, tmp_path):
    """`--task=esc50:PATH` on the release layout, in a subprocess: EVAR's protocol by
    default, 5 folds, each reported, and stated in the output."""
    replicas.esc50(tmp_path / "ESC-50-master", per_fold=2)
    out = tmp_path / "esc50.json"
    p = run_cli(f"--checkpoint={fixtures_dir / 'matpac_flat.pt'}",
                f"--task=esc50:{tmp_path / 'ESC-50-master'}", f"--out={out}", "--cache_dir=")
    assert p.returncode == 0, p.stderr
    assert "esc50: 40 clips; evar protocol: 5 s crops, 5 folds, lr 3e-05, seeds 42,43,44" \
        in p.stderr
    r = json.loads(out.read_text())["tasks"]["esc50"]
    assert r["protocol"]["unit_sec"] == 5.0 and r["protocol"]["lr"] == 3e-5
    assert [(f["test_fold"], f["n_test"], f["n_train"] + f["n_valid"]) for f in r["folds"]] == \
        [(k, 8, 32) for k in range(1, 6)]
    assert all(f["n_valid"] == 4 for f in r["folds"]) and len(r["per_seed"]) == 3
    assert r["mean"] == pytest.approx(np.mean([f["score"] for f in r["folds"]]))


@pytest.mark.slow
def test_cli_suite_lists_absent_tasks_and_writes_the_table(tmp_path):
    """`--suite=matpac --data_root=DIR`, in a subprocess: the tasks found run, the
    others are listed one line each, and OUT.md sets ours beside the published numbers."""
    data = tmp_path / "data"
    replicas.esc50(data / "ESC-50-master", per_fold=2, seconds=1.0)
    replicas.nsynth(data / "nsynth", per_family=(4, 2, 2), seconds=1.0)
    out = tmp_path / "suite.json"
    p = run_cli("--checkpoint=logmel-baseline", "--suite=matpac", f"--data_root={data}",
                f"--out={out}", "--cache_dir=", "--seeds=42")
    assert p.returncode == 0, p.stderr
    skipped = [ln for ln in p.stderr.splitlines() if ln.startswith("skipped: ")]
    assert [ln.split(":")[1].strip() for ln in skipped] == ["openmic", "gtzan", "mtt",
                                                            "fsd50k", "us8k"]
    result = json.loads(out.read_text())
    assert list(result["tasks"]) == ["nsynth", "esc50"] and len(result["skipped"]) == 5
    table = (tmp_path / "suite.md").read_text()
    ours = 100 * result["tasks"]["esc50"]["mean"]
    assert f"| esc50 | accuracy | {ours:.1f} ± 0.0 | 92.1 | {ours - 92.1:+.1f} | 93.0 |" in table
    assert "aurianworld/matpac README, assets/table_results.png" in table
    assert "Not run: mtt: not found under" in table
