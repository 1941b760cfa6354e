"""Linear probe on frozen clip embeddings, EVAR protocol (docs/SPEC.md section 7).

A task is a folder with `meta.csv` (`file,label,split`; split is train,
valid or test; `;` separates the labels of a multi-label clip). Embeddings
are computed once per (checkpoint, task, file list) and cached as .npz, so
re-running the probe with other seeds costs seconds.

Protocol: StandardScaler fitted on the train embeddings; one Linear(d, C)
with torch's default init; Adam lr 3e-5, betas (0.9, 0.999), eps 1e-8 and
weight decay 1e-8 the way torch.optim.Adam does it (L2 added to the gradient
before the moments, `optax.add_decayed_weights` then `optax.adam`; not the
decoupled AdamW); batch min(200, n), shuffled, last batch smaller; up to 200
epochs; early stopping with patience 20 on validation accuracy (macro mAP for
multi-label), best weights restored; 3 seeds, mean and std. Without valid
rows, 10 % of train is held out with every class present (per seed).
"""
from __future__ import annotations

import csv
import dataclasses
import functools
import hashlib
import json
import math
import os
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from matpac_jax import errors

SPLITS = ("train", "valid", "test")
# An accuracy must exceed chance by this much to count as beating it.
CHANCE_MARGIN = 0.02


# -- tasks -------------------------------------------------------------------
@dataclasses.dataclass
class Task:
    name: str
    files: list[str]            # absolute paths
    labels: list[list[str]]     # labels of each clip (one unless multi-label)
    split: np.ndarray           # (N,) 'train' | 'valid' | 'test'
    classes: list[str]
    multilabel: bool

    def targets(self) -> np.ndarray:
        """(N,) class indices, or (N, C) multi-hot for multi-label tasks."""
        index = {c: i for i, c in enumerate(self.classes)}
        if not self.multilabel:
            return np.array([index[ls[0]] for ls in self.labels], np.int32)
        y = np.zeros((len(self.labels), len(self.classes)), np.float32)
        for i, ls in enumerate(self.labels):
            y[i, [index[c] for c in ls]] = 1.0
        return y


def load_task(directory: str | os.PathLike) -> Task:
    """Reads `directory/meta.csv`; file paths are relative to `directory`."""
    directory = os.path.abspath(os.fspath(directory))
    path = os.path.join(directory, "meta.csv")
    if not os.path.isfile(path):
        raise errors.TaskFileError(f"{path}: no such file (a task folder holds meta.csv: "
                                   "file,label,split)")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    missing = {"file", "label", "split"} - set(rows[0] if rows else {})
    if missing:
        raise errors.TaskFileError(
            f"{path}: needs columns file,label,split (missing {sorted(missing)})")
    bad = sorted({r["split"] for r in rows} - set(SPLITS))
    if bad:
        raise errors.TaskFileError(f"{path}: unknown split(s) {bad}; expected {SPLITS}")
    labels = [[s.strip() for s in r["label"].split(";") if s.strip()] for r in rows]
    split = np.array([r["split"] for r in rows])
    for s in ("train", "test"):
        if not (split == s).any():
            raise errors.TaskFileError(f"{path}: no {s!r} rows")
    return Task(
        name=os.path.basename(directory),
        files=[os.path.join(directory, r["file"]) for r in rows],
        labels=labels, split=split,
        classes=sorted({c for ls in labels for c in ls}),
        multilabel=any(len(ls) != 1 for ls in labels),
    )


def holdout_valid(y: np.ndarray, seed: int, fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """(train, valid) indices into `y` with every class in valid, per seed.

    Single-label: stratified, max(1, round(fraction * n_c)) per class (a
    class with a single clip stays in train). Multi-label: one clip per class
    not yet covered, then random clips up to `fraction` of the total.
    """
    rng = np.random.default_rng(seed)
    n = len(y)
    valid: list[int] = []
    if y.ndim == 1:
        for c in np.unique(y):
            idx = rng.permutation(np.flatnonzero(y == c))
            if len(idx) >= 2:
                valid.extend(idx[: max(1, round(fraction * len(idx)))].tolist())
    else:
        chosen = np.zeros(n, bool)
        for c in rng.permutation(y.shape[1]):
            cand = np.flatnonzero((y[:, c] > 0) & ~chosen)
            if len(cand) >= 2 and not (y[chosen, c] > 0).any():
                chosen[rng.choice(cand)] = True
        extra = max(0, round(fraction * n) - int(chosen.sum()))
        chosen[rng.permutation(np.flatnonzero(~chosen))[:extra]] = True
        valid = np.flatnonzero(chosen).tolist()
    valid_arr = np.sort(np.asarray(valid, np.int64))
    train_arr = np.setdiff1d(np.arange(n), valid_arr)
    return train_arr, valid_arr


# -- metrics -----------------------------------------------------------------
def average_precision(y_true: np.ndarray, scores: np.ndarray) -> float:
    """AP of one binary problem: sum over distinct thresholds of
    (R_k - R_{k-1}) * P_k (as sklearn's average_precision_score)."""
    y_true = np.asarray(y_true, bool)
    pos = int(y_true.sum())
    if pos == 0:
        return float("nan")
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    s, t = np.asarray(scores, np.float64)[order], y_true[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # end of each tie group
    tp = np.cumsum(t)[last]
    fp = (last + 1) - tp
    precision, recall = tp / (tp + fp), tp / pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def macro_map(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Mean AP over classes that have a positive in `y_true` (others skipped)."""
    aps = [average_precision(y_true[:, c], scores[:, c]) for c in range(y_true.shape[1])]
    aps = [a for a in aps if not math.isnan(a)]
    return float(np.mean(aps)) if aps else float("nan")


def score(y_true: np.ndarray, logits: np.ndarray, multilabel: bool) -> float:
    if multilabel:
        return macro_map(y_true, logits)
    return float(np.mean(np.argmax(logits, axis=-1) == y_true))


# -- the probe ---------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ProbeConfig:
    lr: float = 3e-5
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 1e-8
    max_batch: int = 200
    epochs: int = 200
    patience: int = 20


def standardize(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """StandardScaler fitted on `train` (zero-variance dims keep scale 1)."""
    mean = train.mean(axis=0, dtype=np.float64)
    std = train.std(axis=0, dtype=np.float64)
    std = np.where(std == 0, 1.0, std)
    return [((x - mean) / std).astype(np.float32) for x in (train, *others)]


def _loss(params, x, y, w, multilabel: bool):
    logits = x @ params["w"] + params["b"]
    if multilabel:
        per = optax.sigmoid_binary_cross_entropy(logits, y).mean(axis=-1)
    else:
        per = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    return jnp.sum(per * w) / jnp.maximum(jnp.sum(w), 1.0)


def _optimizer(cfg: ProbeConfig) -> optax.GradientTransformation:
    """torch.optim.Adam(weight_decay=wd): g + wd * p, then Adam (coupled L2)."""
    return optax.chain(optax.add_decayed_weights(cfg.weight_decay),
                       optax.scale_by_adam(cfg.b1, cfg.b2, cfg.eps), optax.scale(-cfg.lr))


@functools.lru_cache(maxsize=32)
def _make_epoch(cfg: ProbeConfig, n: int, batch: int, multilabel: bool):
    """One jitted epoch: shuffle, then lax.scan over minibatches. The index
    array is padded to whole batches; padded rows have weight 0, so the last
    batch is the smaller one (torch DataLoader, drop_last=False). Cached, so
    seeds and tasks of the same size compile once."""
    steps = -(-n // batch)
    tx = _optimizer(cfg)

    @jax.jit
    def epoch(params, opt_state, x, y, key):
        idx = jnp.concatenate([jax.random.permutation(key, n),
                               jnp.zeros(steps * batch - n, jnp.int32)])
        w = (jnp.arange(steps * batch) < n).astype(jnp.float32)
        idx, w = idx.reshape(steps, batch), w.reshape(steps, batch)

        def step(carry, inp):
            params, opt_state = carry
            i, wi = inp
            grads = jax.grad(_loss)(params, x[i], y[i], wi, multilabel)
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), None

        (params, opt_state), _ = jax.lax.scan(step, (params, opt_state), (idx, w))
        return params, opt_state

    return epoch


@jax.jit
def _predict(params, x):
    return x @ params["w"] + params["b"]


def train_probe(x_train: np.ndarray, y_train: np.ndarray, x_valid: np.ndarray,
                y_valid: np.ndarray, *, multilabel: bool, num_classes: int, seed: int,
                cfg: ProbeConfig = ProbeConfig()) -> tuple[dict, dict]:
    """Fit one linear layer on standardised inputs; returns (best params,
    info) with info = {'valid': best valid score, 'best_epoch', 'epochs'}."""
    n, d = x_train.shape
    key = jax.random.key(seed)
    kw, kb, key = jax.random.split(key, 3)
    bound = 1.0 / math.sqrt(d)  # torch nn.Linear default init
    params = {"w": jax.random.uniform(kw, (d, num_classes), jnp.float32, -bound, bound),
              "b": jax.random.uniform(kb, (num_classes,), jnp.float32, -bound, bound)}
    opt_state = _optimizer(cfg).init(params)
    epoch = _make_epoch(cfg, n, min(cfg.max_batch, n), multilabel)
    x, y = jnp.asarray(x_train), jnp.asarray(y_train)
    xv = jnp.asarray(x_valid)
    best, best_params, best_epoch, e = -np.inf, params, 0, 0
    for e in range(1, cfg.epochs + 1):
        key, sub = jax.random.split(key)
        params, opt_state = epoch(params, opt_state, x, y, sub)
        s = score(y_valid, np.asarray(_predict(params, xv)), multilabel)
        if s >= best:  # ties move the best epoch forward, as EVAR's EarlyStopping
            best, best_params, best_epoch = s, params, e
        elif e - best_epoch >= cfg.patience:
            break
    return best_params, {"valid": float(best), "best_epoch": best_epoch, "epochs": e}


def chance_level(y: np.ndarray) -> float:
    """Accuracy of the best constant guess on `y` (class indices): the
    majority class's share, 1/C on a balanced split."""
    return float(np.bincount(y).max() / len(y))


def probe_task(emb: np.ndarray, task: Task, seeds: Sequence[int] = (0, 1, 2),
               cfg: ProbeConfig = ProbeConfig(), lrs: Sequence[float] = ()) -> dict:
    """Linear probe on `emb` (N, D) in task order: test score per seed.

    `lrs`: if given, a probe is trained per learning rate and the one with
    the best validation score is tested (ties: the first listed); never
    selected on test. The EVAR protocol is the single `cfg.lr`.
    Single-label tasks also get `chance` ({'valid': per seed, 'test'}:
    `chance_level` of each split) and `beat_chance`: in every seed the chosen
    probe scored above chance + CHANCE_MARGIN on valid (it learned) and on
    test (it transfers); a verdict, not a selection (None for mAP tasks: not
    checked).
    """
    y = task.targets()
    test = np.flatnonzero(task.split == "test")
    per_seed, infos, chance = [], [], []
    for seed in seeds:
        train = np.flatnonzero(task.split == "train")
        valid = np.flatnonzero(task.split == "valid")
        if len(valid) == 0:
            tr, va = holdout_valid(y[train], seed)
            train, valid = train[tr], train[va]
        x_tr, x_va, x_te = standardize(emb[train], emb[valid], emb[test])
        best = None
        for lr in lrs or (cfg.lr,):
            params, info = train_probe(
                x_tr, y[train], x_va, y[valid], multilabel=task.multilabel,
                num_classes=len(task.classes), seed=seed, cfg=dataclasses.replace(cfg, lr=lr))
            if best is None or info["valid"] > best[1]["valid"]:
                best = params, {**info, "lr": lr}
        params, info = best
        if not task.multilabel:
            chance.append(chance_level(y[valid]))
        per_seed.append(score(y[test], np.asarray(_predict(params, jnp.asarray(x_te))),
                              task.multilabel))
        infos.append(info)
    beat, chance_split = None, None
    if not task.multilabel:
        chance_split = {"valid": chance, "test": chance_level(y[test])}
        beat = all(i["valid"] > c + CHANCE_MARGIN for i, c in zip(infos, chance)) and all(
            t > chance_split["test"] + CHANCE_MARGIN for t in per_seed)
    return {"metric": "mAP" if task.multilabel else "accuracy",
            "mean": float(np.mean(per_seed)), "std": float(np.std(per_seed)),
            "per_seed": [float(s) for s in per_seed],
            "valid": [i["valid"] for i in infos], "epochs": [i["epochs"] for i in infos],
            "lr": [i["lr"] for i in infos],
            "chance": chance_split, "beat_chance": beat,
            "dim": int(emb.shape[1]), "num_train": int((task.split == "train").sum()),
            "num_test": int(len(test))}


# -- embedding cache ---------------------------------------------------------
def cache_key(checkpoint_id: str, task: Task) -> str:
    """Hash of the checkpoint identity, the task and its exact file list."""
    files = [(f, os.path.getsize(f)) for f in task.files]
    blob = json.dumps([checkpoint_id, task.name, files])
    return hashlib.sha1(blob.encode()).hexdigest()[:20]


def cached_embeddings(embed: Callable[[list[str]], np.ndarray], checkpoint_id: str, task: Task,
                      cache_dir: str | None) -> tuple[np.ndarray, bool]:
    """(N, D) clip embeddings of `task.files`, from `cache_dir` if there.
    Returns (embeddings, True if read from the cache)."""
    path = None
    if cache_dir:
        path = os.path.join(cache_dir, f"{task.name}-{cache_key(checkpoint_id, task)}.npz")
        if os.path.exists(path):
            with np.load(path) as z:
                return z["emb"], True
    emb = np.asarray(embed(task.files), np.float32)
    if path:
        os.makedirs(cache_dir, exist_ok=True)
        tmp = path + ".tmp.npz"
        np.savez(tmp, emb=emb, files=np.asarray(task.files), checkpoint=checkpoint_id)
        os.replace(tmp, path)
    return emb, False
