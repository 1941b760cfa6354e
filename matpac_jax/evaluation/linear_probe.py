"""The linear probe on frozen clip embeddings: EVAR's TorchMLPClassifier2 with no hidden layer.

As daisukelab/general-learning `MLP/torch_mlp_clf2.py` (what EVAR's
lineareval.py runs): inputs standardised with a scaler fit on train
(`standardize`); one Linear(d, C) with torch's default init; Adam lr 3e-5,
betas (0.9, 0.999), eps 1e-8 and weight decay 1e-8 the way torch.optim.Adam
does it (L2 added to the gradient before the moments: `optax.add_decayed_weights`
then `optax.scale_by_adam`, not the decoupled AdamW); loss
`-mean(onehot * log_softmax)` over batch and classes for single-label tasks,
binary cross-entropy for multi-label ones; batch min(200, n), shuffled, the
last batch smaller; up to 200 epochs; early stopping on valid accuracy (macro
mAP of the sigmoid outputs for multi-label) with `>=` and patience 20, the
best weights restored.

One extension: a multi-label task may mark entries unknown (`known`, OpenMIC's
unlabelled instrument/clip pairs); they count in neither loss nor AP.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

# An accuracy must exceed chance by this much to count as beating it.
CHANCE_MARGIN = 0.02


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


def macro_map(y_true: np.ndarray, scores: np.ndarray, known: np.ndarray | None = None) -> float:
    """Mean AP over classes that have a positive in `y_true` (others skipped);
    with `known`, each class is scored on its known entries only."""
    aps = []
    for c in range(y_true.shape[1]):
        keep = slice(None) if known is None else known[:, c]
        aps.append(average_precision(y_true[keep, c], scores[keep, c]))
    aps = [a for a in aps if not math.isnan(a)]
    return float(np.mean(aps)) if aps else float("nan")


def score(y_true: np.ndarray, logits: np.ndarray, multilabel: bool,
          known: np.ndarray | None = None) -> float:
    """Accuracy, or macro mAP of sigmoid(logits) in float32 as EVAR scores it (the
    sigmoid saturates, so large logits tie as they do there)."""
    if multilabel:
        probs = np.asarray(jax.nn.sigmoid(jnp.asarray(logits, jnp.float32)))
        return macro_map(y_true, probs, known)
    return float(np.mean(np.argmax(logits, axis=-1) == y_true))


def chance_level(y: np.ndarray) -> float:
    """Accuracy of the best constant guess on `y` (class indices): the
    majority class's share, 1/C on a balanced split."""
    return float(np.bincount(y).max() / len(y))


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


def scaler(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """sklearn StandardScaler's mean and scale of `x` (zero-variance dims keep scale 1)."""
    std = x.std(axis=0, dtype=np.float64)
    return x.mean(axis=0, dtype=np.float64), np.where(std == 0, 1.0, std)


def standardize(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """StandardScaler fitted on `train`, applied to it and `others`."""
    mean, std = scaler(train)
    return [((x - mean) / std).astype(np.float32) for x in (train, *others)]


def _loss(params, x, y, w, m, multilabel: bool):
    """Mean over the batch's real rows (w) and classes (m: known entries)."""
    logits = x @ params["w"] + params["b"]
    if multilabel:
        per = optax.sigmoid_binary_cross_entropy(logits, y) * m
        return jnp.sum(per * w[:, None]) / jnp.maximum(jnp.sum(m * w[:, None]), 1.0)
    per = optax.softmax_cross_entropy_with_integer_labels(logits, y) / logits.shape[-1]
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
    seeds and folds of the same size compile once."""
    steps = -(-n // batch)
    tx = _optimizer(cfg)

    @jax.jit
    def epoch(params, opt_state, x, y, m, key):
        idx = jnp.concatenate([jax.random.permutation(key, n),
                               jnp.zeros(steps * batch - n, jnp.int32)])
        w = (jnp.arange(steps * batch) < n).astype(jnp.float32)
        idx, w = idx.reshape(steps, batch), w.reshape(steps, batch)

        def step(carry, inp):
            params, opt_state = carry
            i, wi = inp
            grads = jax.grad(_loss)(params, x[i], y[i], wi, m[i], multilabel)
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), None

        (params, opt_state), _ = jax.lax.scan(step, (params, opt_state), (idx, w))
        return params, opt_state

    return epoch


@jax.jit
def predict(params, x):
    return x @ params["w"] + params["b"]


def init_params(seed: int, d: int, num_classes: int) -> tuple[dict, jax.Array]:
    """torch nn.Linear's default init (U(+-1/sqrt(d)) for weight and bias), and
    the key the epochs' shuffles are split from."""
    kw, kb, key = jax.random.split(jax.random.key(seed), 3)
    bound = 1.0 / math.sqrt(d)
    return {"w": jax.random.uniform(kw, (d, num_classes), jnp.float32, -bound, bound),
            "b": jax.random.uniform(kb, (num_classes,), jnp.float32, -bound, bound)}, key


def train_probe(x_train: np.ndarray, y_train: np.ndarray, x_valid: np.ndarray,
                y_valid: np.ndarray, *, multilabel: bool, num_classes: int, seed: int,
                cfg: ProbeConfig = ProbeConfig(), known_train: np.ndarray | None = None,
                known_valid: np.ndarray | None = None) -> tuple[dict, dict]:
    """Fit one linear layer on standardised inputs; returns (best params,
    info) with info = {'valid': best valid score, 'best_epoch', 'epochs'}."""
    n, d = x_train.shape
    params, key = init_params(seed, d, num_classes)
    opt_state = _optimizer(cfg).init(params)
    epoch = _make_epoch(cfg, n, min(cfg.max_batch, n), multilabel)
    x, y = jnp.asarray(x_train), jnp.asarray(y_train)
    m = jnp.ones(y.shape if multilabel else (n,), jnp.float32) if known_train is None else \
        jnp.asarray(known_train, jnp.float32)
    xv = jnp.asarray(x_valid)
    best, best_params, best_epoch, e = -np.inf, params, 0, 0
    for e in range(1, cfg.epochs + 1):
        key, sub = jax.random.split(key)
        params, opt_state = epoch(params, opt_state, x, y, m, sub)
        s = score(y_valid, np.asarray(predict(params, xv)), multilabel, known_valid)
        if s >= best:  # ties move the best epoch forward, as EVAR's EarlyStopping
            best, best_params, best_epoch = s, params, e
        elif e - best_epoch >= cfg.patience:
            break
    return best_params, {"valid": float(best), "best_epoch": best_epoch, "epochs": e}
