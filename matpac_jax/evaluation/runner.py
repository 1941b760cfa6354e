"""Folds x seeds x learning rates of one task, on its one embedding pass.

Output (`run`), one dict per task:
  {metric, mean, std, per_seed, protocol, folds: [{test_fold, score, per_seed,
   n_train, n_valid, n_test, valid, epochs, lr, chance}], beat_chance, dim}
`mean` is the mean over folds of the seed-averaged fold scores; `per_seed` the
fold-averaged score of each seed (EVAR's run of one seed) and `std` their
standard deviation. A task without folds has one fold entry, `test_fold: null`.
"""
from __future__ import annotations

import dataclasses
import sys

import jax.numpy as jnp
import numpy as np

from matpac_jax.evaluation import linear_probe as lp
from matpac_jax.evaluation.embeddings import Embedded
from matpac_jax.evaluation.protocol import Protocol, evar_valid, holdout_valid
from matpac_jax.evaluation.tasks import Task


def fold_rows(task: Task, fold: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, valid, test) clip indices of one fold; valid empty when it is drawn."""
    if fold is None:
        return tuple(np.flatnonzero(task.split == s) for s in ("train", "valid", "test"))
    return (np.flatnonzero(task.fold != fold), np.zeros(0, np.int64),
            np.flatnonzero(task.fold == fold))


def _one_seed(emb: Embedded, task: Task, protocol: Protocol, fold: int | None, seed: int,
              y: np.ndarray) -> dict:
    train, valid, test = fold_rows(task, fold)
    known = task.known
    x_fit = emb.rows(train, "train")  # EVAR fits the scaler before drawing valid out of train
    if len(valid) == 0:
        tr, va = (evar_valid(y[train], [seed] if fold is None else [seed, fold],
                             None if known is None else known[train])
                  if protocol.valid_rule == "evar" else holdout_valid(y[train], seed))
        x_train, x_valid = x_fit[tr], x_fit[va]
        train, valid = train[tr], train[va]
        if protocol.valid_rule != "evar":
            x_fit = x_train
    else:
        x_train, x_valid = x_fit, emb.rows(valid, "valid")
    mean, std = lp.scaler(x_fit)
    x_tr, x_va, x_te = (((x - mean) / std).astype(np.float32)
                        for x in (x_train, x_valid, emb.rows(test, "test")))
    k = (lambda rows: None) if known is None else (lambda rows: known[rows])
    best = None
    for lr in protocol.lrs:
        params, info = lp.train_probe(
            x_tr, y[train], x_va, y[valid], multilabel=task.multilabel,
            num_classes=len(task.classes), seed=seed,
            cfg=dataclasses.replace(protocol.probe, lr=lr), known_train=k(train),
            known_valid=k(valid))
        if best is None or info["valid"] > best[1]["valid"]:  # ties: the first listed
            best = params, {**info, "lr": lr}
    params, info = best
    logits = np.asarray(lp.predict(params, jnp.asarray(x_te)))
    out = {**info, "test": lp.score(y[test], logits, task.multilabel, k(test)),
           "n": (len(train), len(valid), len(test))}
    if not task.multilabel:
        out["chance"] = (lp.chance_level(y[valid]), lp.chance_level(y[test]))
    return out


def run(emb: Embedded, task: Task, protocol: Protocol) -> dict:
    """Probe every fold with every seed (and lr); see the module docstring."""
    y = task.targets()
    folds, verdicts = [], []
    for fold in task.folds():
        runs = [_one_seed(emb, task, protocol, fold, seed, y) for seed in protocol.seeds]
        n_train, n_valid, n_test = runs[0]["n"]
        entry = {"test_fold": fold, "score": float(np.mean([r["test"] for r in runs])),
                 "per_seed": [r["test"] for r in runs], "n_train": n_train,
                 "n_valid": n_valid, "n_test": n_test, "valid": [r["valid"] for r in runs],
                 "epochs": [r["epochs"] for r in runs], "lr": [r["lr"] for r in runs]}
        if not task.multilabel:
            entry["chance"] = {"valid": [r["chance"][0] for r in runs],
                               "test": runs[0]["chance"][1]}
            verdicts += [v > cv + lp.CHANCE_MARGIN and t > entry["chance"]["test"] +
                         lp.CHANCE_MARGIN for v, t, (cv, _) in
                         zip(entry["valid"], entry["per_seed"], (r["chance"] for r in runs))]
        folds.append(entry)
    per_seed = np.mean([f["per_seed"] for f in folds], axis=0)
    return {"metric": "mAP" if task.multilabel else "accuracy",
            "mean": float(np.mean([f["score"] for f in folds])),
            "std": float(np.std(per_seed)), "per_seed": [float(s) for s in per_seed],
            "protocol": protocol.describe(task), "folds": folds,
            "beat_chance": None if task.multilabel else all(verdicts),
            "dim": int(emb.emb.shape[1]), "num_clips": len(task.files)}


def warn_chance(name: str, result: dict) -> None:
    """One stderr line: the folds, seeds and splits where the probe scored at chance."""
    below = []
    for f in result["folds"]:
        where = "" if f["test_fold"] is None else f"fold {f['test_fold']}, "
        for s, v, t, cv in zip(result["protocol"]["seeds"], f["valid"], f["per_seed"],
                               f["chance"]["valid"]):
            for split, got, ch in (("valid", v, cv), ("test", t, f["chance"]["test"])):
                if got <= ch + lp.CHANCE_MARGIN:
                    below.append(f"{split} {got:.3f} ({where}seed {s}, chance {ch:.3f})")
    print(f"warning: {name}: the probe did not beat chance: {', '.join(below)}; try other "
          "--lr values or check the task", file=sys.stderr)
