"""Fine-tune any checkpoint end to end on a labelled task; score test once.

  python -m matpac_jax.finetune --checkpoint=CKPT --task=DIR --workdir=W --out=OUT.json \
      [--config=configs/finetune_esc50.py[:m2d|:beats]] [--config.x=y ...] [--seeds=0,1,2]

CKPT: anything `matpac_jax.load` accepts (our workdirs of every method, one
step's checkpoint folder, official M2D / MATPAC / BEATs files). DIR: a task
folder as for `evaluate` (`meta.csv` with `file,label,split`, `;` between the
labels of a multi-label clip; its audio is turned into shards under
W/data once), or a folder with `train/`, `valid/` and `test/` shard folders
written by `python -m matpac_jax.data.prepare --labels=...` (AudioSet).
Without valid rows, 10 % of train is held out (every class present).

Each seed trains in W/seed_<s> through the one training loop (orbax resume:
re-running the command continues, SIGKILL included), scores the valid split
at every checkpoint, keeps the best weights in W/seed_<s>/best_<step>, and
at the end scores the test split once with them. Clips are scored in
windows of the training length that cover them (the last one ending at the
clip's end; a shorter clip padded and masked), their logits averaged. OUT.json: {"tasks": {NAME: {"metric", "mean", "std",
"per_seed", ...}}}, as `evaluate` writes it. Without --config: the small-task
recipe (configs/finetune_esc50.py:m2d or :beats) for the checkpoint's family,
--config.x=y overrides included. A `data.crop_frames` longer than a ViT
checkpoint's position table (official 80x200 M2D models: 192 frames) is cut
to the table, for training and scoring alike (M2D's fine-tuning interpolates
the table instead).
"""
from __future__ import annotations

import copy
import os
import re
import sys
from typing import Any, Iterator

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import flags
from flax import nnx
from ml_collections import config_flags

from matpac_jax import cli, errors, restore, storage
from matpac_jax.data import frontends, prepare, sources, tfrecord
from matpac_jax.data.shards import (ShardSource, check_frontend, find_shards, held_out,
                                    record_ids, record_labels, split_labels)
from matpac_jax.evaluate import format_table
from matpac_jax.evaluation import linear_probe as lp
from matpac_jax.evaluation import protocol, tasks
from matpac_jax.inference import encoder_with_architecture, load
from matpac_jax.methods import finetune as ft_method
from matpac_jax.training import trainer

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
RECIPE = os.path.join(CONFIGS, "finetune_esc50.py")  # without --config
PROG = "python -m matpac_jax.finetune"
SPLITS = ("train", "valid", "test")
# A shard task without valid/ (AudioSet): valid = min(10 %, 5000 clips) of
# train, picked by clip id (data.shards.held_out, seed 0), the same on every run.
VALID_FRACTION, VALID_CLIPS = 0.1, 5000


# -- the task as shards ------------------------------------------------------
def task_shards(task_dir: str, data_dir: str, frontend: str, write: bool = True
                ) -> dict[str, Any]:
    """{'name', 'splits': {split: shard folder}, 'classes', 'multilabel'}.

    A `meta.csv` task is prepared into `data_dir/<split>` (resumable: done
    shards are kept; `write=False`: only read the task); a folder of prepared
    splits is used as it is."""
    name = os.path.basename(os.path.normpath(task_dir.rstrip("/")))
    if storage.exists(storage.join(task_dir, "meta.csv")):
        task = tasks.load_folder(task_dir)
        split = task.split.copy()
        if not (split == "valid").any():
            train = np.flatnonzero(split == "train")
            _, held = protocol.holdout_valid(task.targets()[train], seed=0)
            split[train[held]] = "valid"
        splits = {}
        for s in SPLITS:
            clips = [sources.Clip(f, os.path.relpath(f, task_dir), ";".join(ls))
                     for f, ls, sp in zip(task.files, task.labels, split) if sp == s]
            out = storage.join(data_dir, s)
            if write:
                prepare.prepare(task_dir, out, frontend, name=s, clips=clips)
            splits[s] = out
        return dict(name=name, splits=splits, classes=task.classes, multilabel=task.multilabel,
                    holdout=0.0)
    splits = {s: storage.join(task_dir, s) for s in SPLITS}
    missing = [s for s, p in splits.items() if not storage.isdir(p)]
    holdout = 0.0
    if missing and missing != ["valid"]:
        raise errors.TaskFileError(f"--task {task_dir}: no meta.csv, and no {missing} shard "
                                   f"folder(s) (python -m matpac_jax.data.prepare --labels=...)")
    labels = record_labels(find_shards(splits["train"]))
    if missing:  # AudioSet has no valid split: carve it from train
        holdout = min(VALID_FRACTION, VALID_CLIPS / max(1, len(labels)))
        splits["valid"] = splits["train"]
    if not any(labels):
        raise errors.TaskFileError(f"{splits['train']}: the shards carry no labels "
                                   "(python -m matpac_jax.data.prepare --labels=CSV)")
    manifest = storage.join(splits["train"], "manifest.json")
    listed = storage.read_json(manifest).get("classes") if storage.exists(manifest) else None
    classes = listed or sorted({c for ls in labels for c in ls})
    return dict(name=name, splits=splits, classes=classes, holdout=holdout,
                multilabel=any(len(ls) != 1 for ls in labels))


def labelled_records(folder: str, frontend: str, holdout: float = 0.0
                     ) -> Iterator[tuple[np.ndarray, list[str]]]:
    """(features (front-end layout, float32, not normalised), labels) of each
    record; with `holdout`, only the records the loader's holdout leaves out."""
    shards = find_shards(folder)
    check_frontend(shards, frontend)
    if not holdout:
        for path in shards:
            for data in tfrecord.read_records(path):
                ex = tfrecord.decode_example(data)
                yield ex["logmel"].astype(np.float32), split_labels(ex.get("label"))
        return
    # The held-out records only (AS-2M: at most 5,000 of 2 M), picked by the
    # sidecars' ids and read where they lie.
    source = ShardSource(shards).keep(held_out(record_ids(shards), holdout))
    for ex in source.examples():
        yield ex["logmel"].astype(np.float32), split_labels(ex.get("label"))


# -- scoring -----------------------------------------------------------------
class Scorer:
    """Logits of whole clips: windows of the training length (`_crops`) through
    the jitted classifier in batches of `batch` (one compiled shape), averaged
    per clip weighted by their valid frames."""

    def __init__(self, method, batch: int):
        self.method, self.batch = method, batch
        spec = method.input
        self.mean, self.std = spec.stats
        self.time_axis = 1 if frontends.FEATURE_LAYOUT[spec.frontend] == "freq_time" else 0
        self.crop = method.config.data.crop_frames

        def logits(state, x, valid):
            model = nnx.merge(self._graphdef, state)
            model.eval()
            return model.student(x, valid_frames=valid)

        self._logits = jax.jit(logits)
        self._graphdef = None

    def _crops(self, feat: np.ndarray) -> list[tuple[np.ndarray, int]]:
        """Windows of the training length that cover the clip, the last one
        ending at the clip's end (overlapping the one before; no padding), or
        one zero-padded window of a clip shorter than that (its valid frames
        rounded up to whole patches)."""
        x = (feat - self.mean) / self.std
        if self.time_axis == 0:
            x = x.T  # (F, T) for cutting, back at the end
        t, crop = x.shape[1], self.crop
        if t <= crop:
            valid = min(crop, -(-t // 16) * 16)
            windows = [(np.pad(x, ((0, 0), (0, crop - t))), valid)]
        else:
            starts = list(range(0, t - crop, crop)) + [t - crop]
            windows = [(x[:, s:s + crop], crop) for s in starts]
        return [(w if self.time_axis else w.T, v) for w, v in windows]

    def __call__(self, model, records) -> tuple[np.ndarray, list[list[str]]]:
        """(clips, classes) float32 logits and each clip's labels."""
        self._graphdef, state = nnx.split(model)
        sums, weights, labels, pending = [], [], [], []

        def flush():
            xs = np.stack([p[1] for p in pending])
            vs = np.array([p[2] for p in pending], np.int32)
            n = len(pending)
            if n < self.batch:
                xs = np.concatenate([xs, np.zeros((self.batch - n, *xs.shape[1:]), xs.dtype)])
                vs = np.concatenate([vs, np.full(self.batch - n, vs[0])])
            out = np.asarray(self._logits(state, xs, vs))[:n]
            for (clip, _, v), lg in zip(pending, out):
                sums[clip] += v * lg
                weights[clip] += v
            pending.clear()

        for feat, ls in records:
            clip = len(labels)
            labels.append(ls)
            sums.append(0.0)
            weights.append(0)
            for c, v in self._crops(feat):
                pending.append((clip, c, v))
                if len(pending) == self.batch:
                    flush()
        if pending:
            flush()
        if not labels:
            raise errors.TaskFileError("a split with no clips to score")
        return np.stack([s / w for s, w in zip(sums, weights)]).astype(np.float32), labels


def metric(logits: np.ndarray, labels: list[list[str]], classes: list[str],
           multilabel: bool) -> float:
    """mAP (multi-label) or accuracy, as the linear probe scores them."""
    index = {c: i for i, c in enumerate(classes)}
    y = np.zeros((len(labels), len(classes)), np.float32)
    for i, ls in enumerate(labels):
        y[i, [index[c] for c in ls if c in index]] = 1.0
    return lp.score(y if multilabel else y.argmax(1), logits, multilabel)


# -- one seed ----------------------------------------------------------------
class BestKeeper:
    """Valid scores per step (`valid_scores.json`) and the best step's model
    weights (`best_<step>/`, written before the record points at them)."""

    def __init__(self, workdir: str):
        self.workdir = workdir
        self.path = storage.join(workdir, "valid_scores.json")
        self.record = {"scores": {}, "best_step": None}
        if storage.exists(self.path):
            self.record = storage.read_json(self.path)

    def update(self, step: int, score: float, model) -> bool:
        scores = self.record["scores"]
        best = old = self.record["best_step"]
        improved = best is None or score > scores[str(best)]
        scores[str(step)] = score
        if improved:
            with ocp.StandardCheckpointer() as ck:
                ck.save(storage.path(self._best(step)), nnx.state(model), force=True)
            self.record["best_step"] = step
        storage.write_json(self.path, self.record)
        if improved and old is not None and old != step:
            storage.remove(self._best(old), recursive=True)
        return improved

    def _best(self, step: int) -> str:
        return storage.join(self.workdir, f"best_{step}")

    def restore(self, model) -> int:
        """Load the best step's weights into `model`; returns that step."""
        step = self.record["best_step"]
        if step is None:
            raise errors.CheckpointError(f"{self.path}: no valid score recorded (did training "
                                         "run?)")
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device),
                                nnx.state(model))
        with ocp.StandardCheckpointer() as ck:
            nnx.update(model, ck.restore(storage.path(self._best(step)), abstract))
        return step


def check_resumable(workdir: str, config) -> None:
    """A seed workdir holding another task's or checkpoint's run is refused
    before anything is read (its head would not fit)."""
    latest = restore.latest_checkpoint(workdir)
    if latest is None:
        return
    old = restore.load_config(latest[1])
    diffs = []
    for key in ("classes", "checkpoint", "pooling", "head_norm", "multilabel"):
        a, b = old.finetune.get(key), config.finetune.get(key)
        a = list(a) if isinstance(a, (list, tuple)) else a
        b = list(b) if isinstance(b, (list, tuple)) else b
        if a != b:
            if key == "classes":
                diffs.append(f"finetune.classes: {len(a)} classes in the checkpoint, "
                             f"{len(b)} in this task" + (" (same count, other names)"
                                                          if len(a) == len(b) else ""))
            else:
                diffs.append(f"finetune.{key}: {a!r} -> {b!r}")
    if diffs:
        raise errors.ConfigError(f"{workdir} holds a fine-tuning run that does not fit this one: "
                         + "; ".join(diffs) + ". Use a new --workdir.")


def run(config, checkpoint: str, task_dir: str, workdir: str,
        seeds: list[int]) -> dict[str, Any]:
    """Fine-tune for each seed; the task's entry of OUT.json."""
    config = copy.deepcopy(config)
    config.unlock()
    config.finetune.checkpoint = storage.absolute(checkpoint)
    arch, pretrained = encoder_with_architecture(config.finetune.checkpoint)
    config.data.frontend = arch["frontend"]
    enc = arch["encoder"]
    if arch["family"] == "vit" and config.data.crop_frames > enc["max_frames"]:
        crop = enc["max_frames"] // enc["patch"] * enc["patch"]
        print(f"data.crop_frames={config.data.crop_frames} is longer than the checkpoint's "
              f"{enc['max_frames']}-frame position table: training and scoring {crop}-frame "
              "crops", file=sys.stderr)
        config.data.crop_frames = crop  # the table as it is (M2D would interpolate it)
    data_dir = storage.join(workdir, "data")
    task = task_shards(task_dir, data_dir, arch["frontend"], write=False)
    config.finetune.classes = tuple(task["classes"])
    config.data.holdout = task["holdout"]
    if task["holdout"]:
        print(f"{task_dir} has no valid split: scoring checkpoints on the clips whose "
              f"held_out(id, seed 0) falls in the lowest {task['holdout']:.4%} of train "
              "(data.shards.held_out; training never sees them)", file=sys.stderr)
    config.finetune.multilabel = bool(task["multilabel"] or config.finetune.multilabel)
    config.data.path = task["splits"]["train"]
    for seed in seeds:  # before any file is written
        check_resumable(storage.join(workdir, f"seed_{seed}"), config)
    task_shards(task_dir, data_dir, arch["frontend"])
    results = {"valid": [], "test": [], "best_step": []}
    for seed in seeds:
        cfg = copy.deepcopy(config)
        cfg.seed = seed
        wd = storage.join(workdir, f"seed_{seed}")
        method = ft_method.FinetuneMethod(cfg, arch, pretrained)
        scorer = Scorer(method, cfg.finetune.eval_batch)
        keeper = BestKeeper(wd)
        valid = task["splits"]["valid"]

        def evaluate(step, model, keeper=keeper, scorer=scorer):
            logits, labels = scorer(model, labelled_records(valid, arch["frontend"],
                                                            task["holdout"]))
            score = metric(logits, labels, task["classes"], cfg.finetune.multilabel)
            keeper.update(step, score, model)
            return {"valid/" + _metric_name(cfg): score}

        trainer.train(cfg, wd, method, evaluate=evaluate)

        model = method.build(nnx.Rngs(0))  # the best weights go in (no optimiser)
        best = keeper.restore(model)
        logits, labels = scorer(model, labelled_records(task["splits"]["test"],
                                                        arch["frontend"]))
        results["test"].append(metric(logits, labels, task["classes"], cfg.finetune.multilabel))
        results["valid"].append(keeper.record["scores"][str(best)])
        results["best_step"].append(best)
        print(f"{task['name']} seed {seed}: best valid {results['valid'][-1]:.4f} at step "
              f"{best}, test {results['test'][-1]:.4f}", file=sys.stderr)
    test = np.asarray(results["test"])
    return {task["name"]: {
        "metric": _metric_name(config), "mean": float(test.mean()), "std": float(test.std()),
        "per_seed": results["test"], "valid_per_seed": results["valid"],
        "best_step_per_seed": results["best_step"], "seeds": seeds,
        "num_classes": len(task["classes"]), "total_steps": config.total_steps,
        "crop_frames": config.data.crop_frames}}


def _metric_name(config) -> str:
    return "mAP" if config.finetune.multilabel else "accuracy"


def default_recipe(checkpoint: str) -> str:
    """The small-task recipe for the checkpoint's family (BEATs or ViT), as --config."""
    return f"{RECIPE}:{'beats' if load(checkpoint).family == 'beats' else 'm2d'}"


FLAGS = flags.FlagValues()
flags.DEFINE_string("checkpoint", None, "checkpoint file, training workdir or step folder",
                    flag_values=FLAGS, required=True)
flags.DEFINE_string("task", None, "task folder (meta.csv, or train/valid/test shard folders)",
                    flag_values=FLAGS, required=True)
flags.DEFINE_string("workdir", None, "checkpoints, prepared task data, logs", flag_values=FLAGS,
                    required=True)
flags.DEFINE_string("out", None, "output JSON", flag_values=FLAGS, required=True)
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "fine-tuning recipe FILE[:ARG] (configs/finetune_*.py); --config.x=y "
    "overrides", flag_values=FLAGS, lock_config=True)
flags.DEFINE_list("seeds", None, "fine-tuning seeds (default: config.finetune.seeds)",
                  flag_values=FLAGS)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not any(re.match(r"-{1,2}config(=|$)", a) for a in argv):
        # The default recipe goes in as --config, so --config.x=y overrides apply to it.
        # A first parse (the beats variant holds every field of the m2d one) checks
        # the flags before the checkpoint is read to learn its family.
        cli.parse(FLAGS, [f"--config={RECIPE}:beats", *argv], PROG, __doc__)
        argv = [f"--config={default_recipe(FLAGS.checkpoint)}", *argv]
    cli.parse(FLAGS, argv, PROG, __doc__)
    cli.output_folder(FLAGS.out)
    config = _CONFIG.value
    seeds = ([int(v) for v in cli.floats(FLAGS, "seeds")] if FLAGS.seeds
             else list(config.finetune.seeds))
    results = run(config, FLAGS.checkpoint, FLAGS.task, FLAGS.workdir, seeds)
    out = {"checkpoint": FLAGS.checkpoint, "config": FLAGS["config"].config_filename,
           "protocol": "fine-tuned end to end; checkpoint picked on valid, test scored once",
           "tasks": results}
    storage.write_json(FLAGS.out, out, indent=2)

    print(format_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
