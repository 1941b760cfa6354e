"""Fine-tuning: real shards, real orbax checkpoints, the real training loop.

The small encoder is the official-format M2D fixture (ViT 192-d); tasks are
toy-sound folders made here (single- and multi-label) and, where present,
the real recorded `../shared/datasets`.
"""
import csv
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import soundfile as sf
from flax import nnx

from matpac_jax import finetune, inference, restore
from matpac_jax.data import loader, prepare, toy_sounds
from matpac_jax.data import shards as shard_files
from matpac_jax.evaluation import embeddings, protocol, runner, tasks
from matpac_jax.methods import finetune as ft_method
from matpac_jax.objectives import finetune as ft_obj

CLASSES = ("chirp", "clicks", "fm_tone", "noise_burst")


def make_task(root, multilabel: bool, n_train=24, n_valid=8, n_test=16, seconds=1.0):
    """A task folder: toy clips with one label, or with one to three of them mixed."""
    os.makedirs(root / "audio", exist_ok=True)
    rows = []
    for k, (split, n) in enumerate((("train", n_train), ("valid", n_valid), ("test", n_test))):
        for i in range(n):
            rng = np.random.default_rng([k, i, multilabel])
            if multilabel:
                labels = list(rng.choice(CLASSES, rng.integers(1, 4), replace=False))
            else:
                labels = [CLASSES[i % len(CLASSES)]]
            wave = sum(toy_sounds.synthesize(c, rng, seconds) for c in labels) / len(labels)
            name = f"audio/{split}_{i}.wav"
            sf.write(root / name, wave, toy_sounds.SR)
            rows.append({"file": name, "label": ";".join(labels), "split": split})
    with open(root / "meta.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["file", "label", "split"])
        w.writeheader()
        w.writerows(rows)
    return root


RECIPE = os.path.join(finetune.CONFIGS, "finetune_esc50.py")
# The ESC-50 M2D recipe at test scale (Adam: the tiny encoder is not M2D ViT-B).
SMALL = {"total_steps": 60, "batch_size": 8, "checkpoint_every": 20, "log_every": 20,
         "data.crop_frames": 96, "opt.optimizer": "adam", "opt.lr": 1e-3, "opt.warmup_steps": 5,
         "opt.weight_decay": 0.0, "opt.b2": 0.999, "opt.end_lr": 0.0,
         "finetune.freeze_embed": False, "finetune.patch_dropout": 0.0,
         "finetune.time_mask_width": 48 * 96 // 496,  # the recipe's mask, scaled to the crop
         "finetune.eval_batch": 8}


def small_config(**overrides):
    import importlib.util

    spec = importlib.util.spec_from_file_location("r", RECIPE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config("m2d")
    for k, v in {**SMALL, **overrides}.items():
        node = c
        *path, last = k.split(".")
        for p in path:
            node = node[p]
        node[last] = v
    return c


def small_flags(**overrides) -> list[str]:
    return [f"--config={RECIPE}"] + [f"--config.{k}={v}" for k, v in {**SMALL, **overrides}.items()]


@pytest.fixture(scope="module")
def m2d(fixtures_dir):
    return str(fixtures_dir / "m2d_checkpoint-300.pth")


def probe_score(checkpoint, task_dir) -> float:
    """The frozen linear probe (EVAR protocol, lr picked on valid) of the same encoder."""
    from matpac_jax.inference import load

    task = tasks.load_folder(task_dir)
    emb = embeddings.Embedded.whole(load(checkpoint).clip_embeddings(task.files))
    return runner.run(emb, task, protocol.for_task(task, (1e-4, 1e-3, 1e-2), (0,)))["mean"]


# -- pieces ------------------------------------------------------------------
def test_layer_decay_scales_each_parameter_by_its_layer(m2d):
    cfg = small_config(**{"finetune.layer_decay": 0.5, "finetune.freeze_embed": True})
    cfg.finetune.classes = CLASSES
    cfg.finetune.checkpoint = m2d
    method = ft_method.FinetuneMethod(cfg, *inference.encoder_with_architecture(m2d))
    model = method.build(nnx.Rngs(0))
    depth = method.depth()
    from matpac_jax.training.optim import path_names

    scales = {path_names(p): method.lr_scale(path_names(p)) for p, _ in
              jax.tree_util.tree_flatten_with_path(nnx.state(model, nnx.Param))[0]}
    by = lambda *frag: {v for k, v in scales.items() if all(f in k for f in frag)}
    assert by("patch_embed") == {0.0}  # frozen
    assert by("cls_token") == {0.5 ** (depth + 1)}
    for i in range(depth):
        assert by("blocks", str(i)) == {0.5 ** (depth - i)}
    assert by("head") == {1.0} and by("stack", "norm", "scale") == {1.0}


def test_structured_mask_drops_whole_rows_and_columns():
    keep = np.asarray(ft_obj.structured_keep(jax.random.key(3), 4, 5, 12, 0.5)).reshape(4, 5, 12)
    kept = keep.sum(axis=(1, 2))
    assert len(set(kept)) == 1 and 0 < kept[0] < 60  # the same count in every example
    for k in keep:  # dropped tokens form whole rows or columns
        rows, cols = ~k.any(axis=1), ~k.any(axis=0)
        assert np.array_equal(~k, rows[:, None] | cols[None, :])


def test_mixup_masks_roll():
    x = jnp.arange(2 * 3 * 8, dtype=jnp.float32).reshape(2, 3, 8)
    y = jnp.eye(2)
    xm, ym = ft_obj.mixup(jax.random.key(0), x, y, alpha=1.0, prob=1.0)
    lam = np.asarray(ym).max(axis=1)
    assert np.allclose(np.asarray(ym).sum(1), 1.0) and (lam >= 0.5).all()
    rolled = ft_obj.random_roll(jax.random.key(1), x, time_axis=2)
    for b in range(2):
        assert any(np.array_equal(np.roll(x[b], s, axis=1), rolled[b]) for s in range(8))
    masked = ft_obj.spec_augment(jax.random.key(2), x + 1, 2, freq_width=2, freq_masks=1,
                                 time_width=4, time_masks=1, shared=True)
    zero = np.asarray(masked) == 0
    assert np.array_equal(zero[0], zero[1])  # one set of bands for the batch


def test_audioset_label_csv_and_balanced_sampling(tmp_path):
    wavs = tmp_path / "wavs"
    wavs.mkdir()
    for i, name in enumerate(["--abc_30.000.wav", "Yxyz.wav", "other_5_15.wav", "nolabel.wav"]):
        sf.write(wavs / name, toy_sounds.synthesize("chirp", np.random.default_rng(i), 0.5),
                 toy_sounds.SR)
    (tmp_path / "seg.csv").write_text(
        "# Segments csv created Sun Mar  5 10:54:31 2017\n"
        "# num_ytids=3, num_segs=3, num_unique_labels=3, num_positive_labels=4\n"
        "# YTID, start_seconds, end_seconds, positive_labels\n"
        '--abc, 30.000, 40.000, "/m/a,/m/b"\n'
        'xyz, 0.000, 10.000, "/m/a"\n'
        'other, 5.000, 15.000, "/m/c"\n')
    m = prepare.prepare(str(wavs), str(tmp_path / "out"), "matpac", labels=str(tmp_path / "seg.csv"))
    assert m["num_examples"] == 3 and m["classes"] == ["/m/a", "/m/b", "/m/c"]
    assert [s["file"].endswith("nolabel.wav") for s in m["skipped"]] == [True]
    shards = shard_files.find_shards(tmp_path / "out")
    labels = shard_files.record_labels(shards)
    assert sorted(map(tuple, labels)) == [("/m/a",), ("/m/a", "/m/b"), ("/m/c",)]
    w = loader.balanced_weights(labels)
    order = {tuple(ls): p for ls, p in zip(labels, w)}  # rare labels weigh more
    assert order[("/m/a", "/m/b")] > order[("/m/c",)] > order[("/m/a",)]
    it = loader.make_loader(tmp_path / "out", frontend="matpac", crop_frames=32, batch_size=3,
                            seed=0, classes=("/m/a", "/m/b", "/m/c"), balanced=True)
    batch = next(it)
    assert batch["y"].shape == (3, 3) and set(batch["y"].sum(1)) <= {1.0, 2.0}


# -- end to end --------------------------------------------------------------
@pytest.mark.parametrize("multilabel", [False, True], ids=["single", "multi"])
def test_finetuning_beats_the_frozen_probe(tmp_path, m2d, multilabel):
    # Multi-label: more clips and steps (4 binary problems, one to three sources mixed).
    task = make_task(tmp_path / ("multi" if multilabel else "single"), multilabel,
                     n_train=48 if multilabel else 24, n_valid=16 if multilabel else 8)
    probe = probe_score(m2d, task)
    # frame_concat: the pooling of the probe's embeddings, so only the training differs.
    cfg = small_config(total_steps=300 if multilabel else 60, checkpoint_every=30,
                       **{"finetune.pooling": "frame_concat"})
    r = finetune.run(cfg, m2d, str(task), str(tmp_path / "w"), [0])[task.name]
    assert r["metric"] == ("mAP" if multilabel else "accuracy")
    print(f"fine-tuned {r['mean']:.3f} vs probe {probe:.3f}")
    assert r["mean"] > probe
    assert os.path.isdir(tmp_path / "w" / "seed_0" / f"best_{r['best_step_per_seed'][0]}")
    assert os.path.isfile(tmp_path / "w" / "seed_0" / "valid_scores.json")


def test_a_head_mismatch_on_resume_is_refused(tmp_path, m2d):
    task = make_task(tmp_path / "t", multilabel=False, n_train=8, n_valid=4, n_test=4)
    cfg = small_config(total_steps=4, checkpoint_every=4)
    finetune.run(cfg, m2d, str(task), str(tmp_path / "a"), [0])
    other = make_task(tmp_path / "t3", multilabel=False, n_train=6, n_valid=3, n_test=3)
    meta = (other / "meta.csv").read_text().replace("noise_burst", "chirp")
    (other / "meta.csv").write_text(meta)  # 3 classes now
    with pytest.raises(ValueError, match="4 classes in the checkpoint, 3 in this task"):
        finetune.run(cfg, m2d, str(other), str(tmp_path / "a"), [0])


def _final_weights(seed_dir):

    path = restore.find_checkpoint(str(seed_dir))
    method = ft_method.FinetuneMethod.from_config(restore.load_config(path),
                                                  restore.load_architecture(path))
    _, abstract = nnx.split(nnx.eval_shape(lambda: method.build(nnx.Rngs(0))))
    return jax.tree.leaves(restore.restore_model_state(path, abstract))


@pytest.mark.slow
def test_sigkill_then_rerun_ends_at_the_same_weights_and_scores(tmp_path, m2d):
    import signal
    import subprocess
    import sys
    import time


    task = make_task(tmp_path / "t", multilabel=False, n_train=12, n_valid=4, n_test=4)
    over = {"total_steps": 12, "checkpoint_every": 4}

    def args(name):
        return [f"--checkpoint={m2d}", f"--task={task}", f"--workdir={tmp_path / name}",
                f"--out={tmp_path / name}.json", *small_flags(**over)]

    proc = subprocess.Popen([sys.executable, "-m", "matpac_jax.finetune", *args("killed")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seed_dir = tmp_path / "killed" / "seed_0"
    deadline = time.time() + 300
    while restore.latest_checkpoint(str(seed_dir)) is None:
        assert proc.poll() is None, "fine-tuning exited before its first checkpoint"
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert restore.latest_checkpoint(str(seed_dir))[0] < 12
    assert finetune.main(args("killed")) == 0  # the same command again
    assert finetune.main(args("straight")) == 0
    killed = json.loads((tmp_path / "killed.json").read_text())["tasks"]
    straight = json.loads((tmp_path / "straight.json").read_text())["tasks"]
    assert killed == straight
    for a, b in zip(_final_weights(seed_dir), _final_weights(tmp_path / "straight" / "seed_0")):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    from matpac_jax.inference import load  # a fine-tuned workdir embeds like any other

    emb = load(seed_dir).clip_embeddings(tasks.load_folder(task).files[:2])
    assert emb.shape == (2, 5 * 192) and np.isfinite(emb).all()


@pytest.mark.parametrize("crop", [None, 96], ids=["recipe_crop", "crop_override"])
def test_default_recipe_fits_a_short_position_table_and_takes_overrides(tmp_path, m2d, crop):
    """Without --config: the ESC-50 recipe's 496-frame crop is cut to the fixture's
    192-frame table (an official 80x200 M2D model has the same), and --config.x=y
    overrides apply to the recipe (a few steps here, not its 2,400)."""
    task = make_task(tmp_path / "t", multilabel=False, n_train=8, n_valid=4, n_test=4)
    out = tmp_path / "out.json"
    small = {"total_steps": 2, "checkpoint_every": 2, "batch_size": 8,
             "finetune.eval_batch": 8, **({"data.crop_frames": crop} if crop else {})}
    argv = [f"--checkpoint={m2d}", f"--task={task}", f"--workdir={tmp_path / 'w'}",
            f"--out={out}", *[f"--config.{k}={v}" for k, v in small.items()]]
    assert finetune.main(argv) == 0
    result = json.loads(out.read_text())
    r = result["tasks"]["t"]
    assert result["config"] == f"{RECIPE}:m2d"
    assert r["crop_frames"] == (crop or 192) and r["total_steps"] == 2
    assert r["best_step_per_seed"] == [2] and 0 <= r["mean"] <= 1


@pytest.mark.slow
def test_cli_on_real_recordings(tmp_path, datasets_dir, m2d):
    out = tmp_path / "out.json"
    args = [f"--checkpoint={m2d}", f"--task={datasets_dir / 'keywords_digits'}",
            f"--workdir={tmp_path / 'w'}", f"--out={out}",
            *small_flags(total_steps=30, checkpoint_every=15)]
    assert finetune.main(args) == 0
    r = json.loads(out.read_text())["tasks"]["keywords_digits"]
    assert r["metric"] == "accuracy" and 0 <= r["mean"] <= 1 and len(r["per_seed"]) == 1


def test_sgd_is_torch_sgd_with_momentum_and_scaled_per_parameter():
    """opt.optimizer='sgd': buf = m * buf + g; p -= lr_t * buf (torch.optim.SGD,
    dampening 0, no Nesterov), lr_t the warm-up cosine; lr_scale multiplies a
    parameter's step (0: frozen)."""
    import ml_collections

    from matpac_jax.training import optim

    opt = ml_collections.ConfigDict(dict(optimizer="sgd", momentum=0.9, lr=0.5, warmup_steps=2,
                                         end_lr=1e-7, weight_decay=0.0, decay_exclude_1d=True,
                                         clip_grad_norm=0.0, adam="adamw", b1=0.9, b2=0.999,
                                         eps=1e-8))
    scale = lambda path: 0.0 if path[0] == "frozen" else 1.0
    tx, lr = optim.make_optimizer(opt, 6, scale)
    params = {"w": jnp.array([1.0, -2.0]), "frozen": jnp.array([3.0])}
    state = tx.init(params)
    w, buf = np.array([1.0, -2.0]), np.zeros(2)
    for t in range(6):
        g = {"w": 2 * params["w"], "frozen": params["frozen"]}
        updates, state = tx.update(g, state, params)
        params = jax.tree.map(lambda p, u: p + u, params, updates)
        buf = 0.9 * buf + 2 * w
        w = w - float(lr(t)) * buf
        np.testing.assert_allclose(np.asarray(params["w"]), w, rtol=1e-6)
    assert float(params["frozen"][0]) == 3.0


def test_audioset_shards_without_valid_carve_it_and_score_the_official_classes(tmp_path, m2d):
    """AudioSet as prepared: train/ and test/ shards (segment CSVs, the class list
    stored with them), no valid/. Valid is carved from train by clip id and training
    never sees it; scores are over the official classes in their order, a class no
    train clip has included."""
    mids = ["/m/a", "/m/b", "/m/c", "/m/unseen"]
    (tmp_path / "classes.csv").write_text(
        "index,mid,display_name\n" + "\n".join(f"{i},{m},n{i}" for i, m in enumerate(mids)))
    for split, n in (("train", 40), ("test", 8)):
        wavs = tmp_path / f"{split}_wavs"
        wavs.mkdir()
        rows = []
        for i in range(n):
            rng = np.random.default_rng([split == "test", i])
            sf.write(wavs / f"{split}{i:03d}.wav", toy_sounds.synthesize(
                CLASSES[i % 3], rng, 0.5), toy_sounds.SR)
            label = "/m/unseen" if split == "test" and i == 0 else mids[i % 3]
            rows.append(f'{split}{i:03d}, 0.000, 10.000, "{label}"')
        (tmp_path / f"{split}.csv").write_text("# YTID, start_seconds, end_seconds, "
                                               "positive_labels\n" + "\n".join(rows))
        prepare.prepare(str(wavs), str(tmp_path / "as" / split), "m2d",
                        labels=str(tmp_path / f"{split}.csv"),
                        classes=str(tmp_path / "classes.csv"))
    task = finetune.task_shards(str(tmp_path / "as"), "", "m2d", write=False)
    assert task["classes"] == mids and task["holdout"] == pytest.approx(0.1)
    ids = shard_files.record_ids(shard_files.find_shards(task["splits"]["train"]))
    held = set(np.asarray(ids)[shard_files.held_out(ids, task["holdout"])])
    assert held  # some clips are valid, and training never sees them
    seen = {i for b in loader.make_loader(task["splits"]["train"], frontend="m2d",
                                          crop_frames=32, batch_size=4, seed=0, num_epochs=1,
                                          with_ids=True, holdout=task["holdout"],
                                          drop_remainder=False) for i in b["id"]}
    assert seen == set(ids) - held
    r = finetune.run(small_config(total_steps=4, checkpoint_every=2), m2d,
                     str(tmp_path / "as"), str(tmp_path / "w"), [0])["as"]
    assert r["num_classes"] == 4 and r["metric"] == "mAP" or r["metric"] == "accuracy"


@pytest.mark.slow
def test_a_preempted_finetune_writes_no_result_and_exits_75(tmp_path, m2d):
    import signal
    import subprocess
    import sys

    task = make_task(tmp_path / "t", multilabel=False, n_train=12, n_valid=4, n_test=4)
    args = [f"--checkpoint={m2d}", f"--task={task}", f"--workdir={tmp_path / 'w'}",
            f"--out={tmp_path / 'out.json'}",
            *small_flags(total_steps=100000, checkpoint_every=100000, log_every=1)]
    proc = subprocess.Popen([sys.executable, "-m", "matpac_jax.finetune", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:  # wait until training steps run
        if line.startswith("step 2/"):
            break
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 75, out[-2000:]
    assert out.strip().splitlines()[-1].startswith("preempted: at step ")
    assert "re-run the same command to resume" in out.strip().splitlines()[-1]
    assert not (tmp_path / "out.json").exists()  # no result from a fraction of the run
    args[-len(small_flags(total_steps=100000, checkpoint_every=100000, log_every=1)):] = \
        small_flags(total_steps=8, checkpoint_every=4)
    assert finetune.main(args) == 0  # the run finishes, then the result is written
    assert json.loads((tmp_path / "out.json").read_text())["tasks"]["t"]["total_steps"] == 8
