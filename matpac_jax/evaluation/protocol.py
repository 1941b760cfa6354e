"""EVAR's linear-evaluation protocol, per task: clip duration, crops, folds, valid split, seeds.

Facts from nttcslab/eval-audio-repr (`evar/ds_tasks.py`, `evar/data.py`,
`lineareval.py`) and its probe (daisukelab/general-learning
`MLP/torch_mlp_clf2.py`):
- each clip is cut or zero-padded to the task's `unit_sec`: train and valid
  clips at a random offset, test clips from the start;
- a task with folds is cross-validated (each fold the test set once, scores
  averaged); without a valid split, valid is a random 10 % of train
  (ceil(0.1 n) clips), redrawn (up to 100 times) until it holds every class of
  train; the scaler is fit on train before that split, else on train alone;
- one Linear layer, Adam (0.9, 0.999, eps 1e-8, weight decay 1e-8), lr 3e-5
  (M2D's `lr_lineareval`), batch min(200, n), up to 200 epochs, early
  stopping on valid with patience 20; runs with seeds 42, 43, 44 averaged.

A `meta.csv` folder keeps this project's own protocol ("folder"): whole clips,
the lr picked on valid from a grid, seeds 0-2, a stratified 10 % valid when the
folder has no valid rows (docs/RESULTS.md). Either way, `--lr` and `--seeds`
override, and the output states what ran (`Protocol.describe`).
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from matpac_jax import errors
from matpac_jax.evaluation.linear_probe import ProbeConfig
from matpac_jax.evaluation.tasks import Task

# unit_sec of each task in EVAR's evar/ds_tasks.py (commit 88ba772).
EVAR_UNIT_SEC = {
    "us8k": 4.0, "esc50": 5.0, "fsd50k": 7.6358, "fsdnoisy18k": 8.25, "gtzan": 30.0,
    "nsynth": 4.0, "nspitch": 4.0, "nsvelocity": 4.0, "cremad": 2.5, "cremad_gender": 2.5,
    "spcv1": 1.0, "spcv2": 1.0, "surge": 4.0, "vc1": 8.2, "vocalsound": 4.18,
    "voxforge": 5.8, "as20k": 10.0, "as": 10.0,
}
# Tasks of the MATPAC paper that EVAR does not define: whole clips (10 s / 29.1 s).
WHOLE_CLIP_TASKS = ("openmic", "mtt")
EVAR_SEEDS = (42, 43, 44)
EVAR_LR = 3e-5
FOLDER_SEEDS = (0, 1, 2)
# EVAR's fixed 3e-5 can leave small tasks at chance after 200 epochs (docs/RESULTS.md).
LR_GRID = (3e-5, 1e-4, 3e-4, 1e-3)
VALID_FRACTION = 0.1
VALID_DRAWS = 100


@dataclasses.dataclass(frozen=True)
class Protocol:
    name: str                   # 'evar' | 'folder'
    unit_sec: float | None      # None: whole clips, no crop or padding
    seeds: tuple[int, ...]
    lrs: tuple[float, ...]      # one value: fixed; several: picked on valid per seed
    valid_rule: str             # 'evar' (random 10 % with every class) | 'stratified'
    probe: ProbeConfig = ProbeConfig()
    note: str = ""

    @property
    def crop_seed(self) -> int:
        """Seed of the train/valid crop offsets: the first probe seed, drawn once
        per task so that folds and seeds share one embedding pass."""
        return self.seeds[0]

    def describe(self, task: Task) -> dict:
        """What ran, for the output JSON and the log line."""
        probe = {k: v for k, v in dataclasses.asdict(self.probe).items() if k != "lr"}
        out = {"name": self.name,
               "unit_sec": self.unit_sec,
               "crop": ("whole clips" if self.unit_sec is None else
                        f"cut or zero-padded to {self.unit_sec} s; train/valid at a random "
                        f"offset (drawn once, seed {self.crop_seed}), test from the start"),
               "folds": None if task.fold is None else len(task.folds()),
               "valid": self._valid_text(task),
               "scaler": "StandardScaler fit on train" + (
                   "" if self._has_valid(task) else ", before valid is drawn from it (EVAR)"
                   if self.valid_rule == "evar" else ", after the valid holdout"),
               "probe": {"model": "Linear", **probe, "batch": f"min({self.probe.max_batch}, n)"},
               "seeds": list(self.seeds),
               "metric": ("macro mAP over the classes with a positive in test"
                          if task.multilabel else "accuracy")}
        if len(self.lrs) == 1:
            out["lr"] = self.lrs[0]
        else:
            out["lr_grid"] = list(self.lrs)
            out["lr_selection"] = "picked on valid per seed (a deviation from EVAR's fixed lr)"
        if self.note:
            out["note"] = self.note
        return out

    @staticmethod
    def _has_valid(task: Task) -> bool:
        return task.split is not None and bool((task.split == "valid").any())

    def _valid_text(self, task: Task) -> str:
        if self._has_valid(task):
            return "the dataset's valid split"
        if self.valid_rule == "evar":
            return ("a random 10 % of train holding every class (EVAR), redrawn per seed"
                    + (" and fold" if task.fold is not None else ""))
        return "a stratified 10 % of train per seed, every class present"

    def summary(self, task: Task) -> str:
        d = self.describe(task)
        lr = f"lr {d['lr']:g}" if "lr" in d else "lr picked on valid from " + ",".join(
            f"{v:g}" for v in d["lr_grid"])
        folds = f", {d['folds']} folds" if d["folds"] else ""
        clip = "whole clips" if self.unit_sec is None else f"{self.unit_sec:g} s crops"
        metric = "macro mAP" if task.multilabel else "accuracy"
        return (f"{self.name} protocol: {clip}{folds}, {lr}, seeds "
                f"{','.join(map(str, self.seeds))}, {metric}")


def for_task(task: Task, lrs: tuple[float, ...] | None = None,
             seeds: tuple[int, ...] | None = None, epochs: int = 200) -> Protocol:
    """EVAR's protocol for a named or EVAR-form task, the folder protocol for a
    meta.csv folder; `lrs` / `seeds` given on the command line win."""
    probe = ProbeConfig(epochs=epochs)
    if task.kind == "folder":
        return Protocol("folder", None, tuple(seeds or FOLDER_SEEDS), tuple(lrs or LR_GRID),
                        "stratified", probe)
    note = ""
    if task.kind in EVAR_UNIT_SEC:
        unit = EVAR_UNIT_SEC[task.kind]
    elif task.kind in WHOLE_CLIP_TASKS:
        unit, note = None, (f"{task.kind}: not an EVAR task; whole clips, EVAR's probe "
                            "(docs/RESULTS.md: the MATPAC paper's own settings are not public)")
    else:
        unit, note = None, f"{task.kind}: no duration in EVAR's ds_tasks.py; whole clips"
    return Protocol("evar", unit, tuple(seeds or EVAR_SEEDS), tuple(lrs or (EVAR_LR,)),
                    "evar", probe, note)


# -- crops -------------------------------------------------------------------
def random_offset(length: int, unit: int, seed: int, index: int) -> int:
    """EVAR's `np.random.randint(length - unit)` for clip `index`, reproducible per seed."""
    if length <= unit:
        return 0
    return int(np.random.default_rng([seed, index]).integers(length - unit))


def cut_or_pad(wave: np.ndarray, unit: int, offset: int) -> np.ndarray:
    """`unit` samples from `offset`, zero-padded at the end when the clip is shorter."""
    piece = wave[offset:offset + unit]
    return np.pad(piece, (0, unit - len(piece))) if len(piece) < unit else piece


# -- the valid split ---------------------------------------------------------
def classes_present(y: np.ndarray, known: np.ndarray | None = None) -> np.ndarray:
    """Bool (C,) or the set of class ids that have a (known) positive in `y`."""
    if y.ndim == 1:
        return np.unique(y)
    pos = y > 0 if known is None else (y > 0) & known
    return pos.any(axis=0)


def evar_valid(y: np.ndarray, seed: int | list[int], known: np.ndarray | None = None,
               fraction: float = VALID_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """(train, valid) indices into `y`: EVAR's `train_test_sure_split`, a random
    ceil(fraction * n) clips redrawn until valid holds every class of `y`."""
    n = len(y)
    n_valid = math.ceil(fraction * n)
    rng = np.random.default_rng(seed)
    want = classes_present(y, known)
    for _ in range(VALID_DRAWS):
        perm = rng.permutation(n)
        valid, train = np.sort(perm[:n_valid]), np.sort(perm[n_valid:])
        got = classes_present(y[valid], None if known is None else known[valid])
        if np.array_equal(got, want):
            return train, valid
    raise errors.TaskFileError(
        f"no random {fraction:.0%} of {n} train clips holds every one of the "
        f"{int(np.sum(want)) if y.ndim > 1 else len(want)} classes in {VALID_DRAWS} draws "
        "(EVAR's valid rule); the task is too small for it: give it valid rows")


def holdout_valid(y: np.ndarray, seed: int, fraction: float = VALID_FRACTION
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(train, valid) indices into `y` with every class in valid, per seed
    (the folder protocol, and fine-tuning).

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
