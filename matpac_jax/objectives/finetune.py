"""Supervised fine-tuning: on-device augmentation and the classification losses.

Everything here acts on a normalised batch inside the jitted step, drawing
its randomness from the step's key, so a resumed run sees the same augmented
batches. Masked bins and frames are set to 0, the normalised data mean.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def mixup(rng: jax.Array, x: jax.Array, y: jax.Array, alpha: float, prob: float):
    """Each example, with probability `prob`, mixed with another of the batch:
    `lam * a + (1 - lam) * b` for both features and targets, lam ~ Beta(alpha, alpha)
    per example."""
    if prob <= 0 or alpha <= 0:
        return x, y
    k_perm, k_lam, k_on = jax.random.split(rng, 3)
    b = x.shape[0]
    partner = jax.random.permutation(k_perm, b)
    lam = jax.random.beta(k_lam, alpha, alpha, (b,))
    lam = jnp.where(jax.random.uniform(k_on, (b,)) < prob, lam, 1.0)
    mix = lambda a, lam_b: lam_b * a + (1 - lam_b) * a[partner]
    return (mix(x, lam.reshape(b, *([1] * (x.ndim - 1)))),
            mix(y, lam.reshape(b, *([1] * (y.ndim - 1)))))


def _band_mask(rng: jax.Array, batch: int, size: int, max_width: int, count: int) -> jax.Array:
    """(B, size) bool: `count` bands per example, each of width ~ U[0, max_width),
    starting uniformly where it fits (torchaudio's Frequency/TimeMasking)."""
    if max_width <= 0 or count <= 0:
        return jnp.zeros((batch, size), bool)
    kw, ks = jax.random.split(rng)
    width = jax.random.randint(kw, (batch, count), 0, min(max_width, size))
    start = (jax.random.uniform(ks, (batch, count)) * (size - width)).astype(jnp.int32)
    pos = jnp.arange(size)[None, None]
    inside = (pos >= start[..., None]) & (pos < (start + width)[..., None])
    return inside.any(axis=1)


def spec_augment(rng: jax.Array, x: jax.Array, time_axis: int, *, freq_width: int,
                 freq_masks: int, time_width: int, time_masks: int,
                 shared: bool = False) -> jax.Array:
    """Frequency and time masking of (B, F, T) or (B, T, F) features (`time_axis` 1 or 2).
    `shared`: one set of bands for the whole batch (torchaudio's masking of a
    batch tensor with `iid_masks=False`, as M2D's fine-tuning applies it)."""
    kf, kt = jax.random.split(rng)
    b = 1 if shared else x.shape[0]
    freq_axis = 3 - time_axis
    fm = _band_mask(kf, b, x.shape[freq_axis], freq_width, freq_masks)
    tm = _band_mask(kt, b, x.shape[time_axis], time_width, time_masks)
    fm = fm[:, :, None] if freq_axis == 1 else fm[:, None, :]
    tm = tm[:, :, None] if time_axis == 1 else tm[:, None, :]
    return jnp.where(fm | tm, 0.0, x)


def random_roll(rng: jax.Array, x: jax.Array, time_axis: int) -> jax.Array:
    """Circular shift of each example along time by U[0, T) frames."""
    t = x.shape[time_axis]
    shift = jax.random.randint(rng, (x.shape[0],), 0, t)
    idx = (jnp.arange(t)[None] - shift[:, None]) % t  # out[i] = x[i - shift]
    idx = idx[:, None, :] if time_axis == 2 else idx[:, :, None]
    return jnp.take_along_axis(x, jnp.broadcast_to(idx, x.shape), axis=time_axis)


def structured_keep(rng: jax.Array, batch: int, grid_f: int, grid_t: int,
                    ratio: float) -> jax.Array:
    """(B, grid_f * grid_t) bool, frequency-major: tokens kept by M2D's structured
    training mask (`random_structured_mask` of the official fine-tuning). Per
    step, NF ~ int(F (ratio + 1/F) U) frequency rows (at most F - 1) and
    NT = int(T max(ratio + 0.5/T - NF/F, 0)) time columns are dropped, the same
    counts for every example, at random rows and columns per example."""
    ku, kf, kt = jax.random.split(rng, 3)
    f, t = grid_f, grid_t
    nf = jnp.floor(f * (ratio + 1.0 / f) * jax.random.uniform(ku)).astype(jnp.int32)
    nf = jnp.minimum(f - 1, nf)
    nt = jnp.floor(t * jnp.maximum(ratio + 0.5 / t - nf / f, 0.0)).astype(jnp.int32)
    rank = lambda k, n: jnp.argsort(jnp.argsort(jax.random.uniform(k, (batch, n)), axis=1), axis=1)
    rows = rank(kf, f) < nf
    cols = rank(kt, t) < nt
    return ~(rows[:, :, None] | cols[:, None, :]).reshape(batch, f * t)


def smooth(y: jax.Array, eps: float, multilabel: bool) -> jax.Array:
    """Label smoothing: towards uniform over classes (softmax) or 1/2 (sigmoid)."""
    if eps <= 0:
        return y
    return y * (1 - eps) + eps * (0.5 if multilabel else 1.0 / y.shape[-1])


def classification_loss(logits: jax.Array, y: jax.Array, multilabel: bool) -> jax.Array:
    """Mean BCE over examples and classes (multi-label), or soft-target cross-entropy."""
    logits = logits.astype(jnp.float32)
    if multilabel:
        return optax.sigmoid_binary_cross_entropy(logits, y).mean()
    return -(y * jax.nn.log_softmax(logits, axis=-1)).sum(axis=-1).mean()
