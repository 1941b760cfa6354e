"""Codebooks and acoustic tokenizers of BEATs (docs/SPEC.md section 8).

- `VectorQuantizer`: the official normalised EMA quantizer (spherical
  k-means init on a first batch, EMA decay of the assigned means, commitment
  loss with the straight-through estimator);
- `BEATsTokenizer`: BEATs backbone + quantize layer + codebook -> patch labels;
- `RandomProjectionTokenizer`: the frozen iteration-1 tokenizer.

Codebook state lives in `CodebookState` variables, never `nnx.Param`: the
optimiser (`wrt=nnx.Param`) leaves it alone and the k-means / EMA updates
mutate it inside the (nnx-transformed) loss. Statistics are one-hot sums
over the batch axis, so under `jax.jit` with a data-sharded global batch
(one or many hosts) XLA all-reduces them: every device sees the same codebook.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from matpac_jax.models.beats import BEATsEncoder, patchify
from matpac_jax.models.beats_layers import BEATsConfig, linear, xavier_normal
from matpac_jax.models.layers import l2_normalize

_HI = jax.lax.Precision.HIGHEST


class CodebookState(nnx.Variable):
    """Frozen or EMA/k-means maintained state (codebooks, projections, usage).

    Not an `nnx.Param`: `nnx.Optimizer(..., wrt=nnx.Param)` never touches it,
    and `nnx.grad(..., wrt=nnx.Param)` does not differentiate it.
    """


def codebook_usage(ids: jax.Array, num_codes: int) -> dict[str, jax.Array]:
    """Counts, perplexity, used and dead (unused in `ids`) codes.

    One-hot sums, so under jit on a sharded batch the counts are global.
    """
    counts = jax.nn.one_hot(ids.reshape(-1), num_codes, dtype=jnp.float32).sum(0)
    p = counts / jnp.maximum(counts.sum(), 1.0)
    entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0))
    used = jnp.sum(counts > 0)
    return {"counts": counts, "perplexity": jnp.exp(entropy),
            "used_codes": used, "dead_codes": num_codes - used}


def spherical_kmeans(z: jax.Array, num_codes: int, key: jax.Array,
                     iters: int = 10) -> tuple[jax.Array, jax.Array]:
    """Cosine k-means of unit vectors z (M, d) -> (unit means (K, d), bins (K,)).

    As the official `kmeans(use_cosine_sim=True)`: means start from K samples
    (without replacement when M >= K), empty clusters keep their mean, `bins`
    are the counts of the last assignment. All statistics are one-hot
    contractions over the sample axis: under `jax.jit` on a batch sharded
    over devices (or hosts: a global `jax.Array`) XLA all-reduces them, so the
    result equals the unsharded one.
    """
    z = z.astype(jnp.float32)
    m = z.shape[0]
    idx = (jax.random.permutation(key, m)[:num_codes] if m >= num_codes
           else jax.random.randint(key, (num_codes,), 0, m))
    means = z[idx]

    def step(_, carry):
        means, _ = carry
        ids = jnp.argmax(jnp.dot(z, means.T, precision=_HI), axis=-1)
        onehot = jax.nn.one_hot(ids, num_codes, dtype=jnp.float32)
        bins = onehot.sum(0)
        sums = jnp.dot(onehot.T, z, precision=_HI)
        new = l2_normalize(sums / jnp.maximum(bins, 1.0)[:, None])
        return jnp.where((bins == 0)[:, None], means, new), bins

    return jax.lax.fori_loop(0, iters, step, (means, jnp.zeros((num_codes,), jnp.float32)))


class VectorQuantizer(nnx.Module):
    """Normalised EMA vector quantizer (official `NormEMAVectorQuantizer`).

    State (all `CodebookState`, never optimised): `embedding` (K, d) unit
    codewords, `cluster_size` (K,) EMA of assignment counts, `initted` ().
    Input vectors are L2-normalised; the label is the nearest codeword
    (official distance `|z|^2 + |w|^2 - 2 z.w`, float32 at full precision).
    """

    def __init__(self, num_codes: int = 1024, dim: int = 256, *, decay: float = 0.99,
                 beta: float = 1.0, kmeans_iters: int = 10):
        self.num_codes, self.dim = num_codes, dim
        self.decay, self.beta, self.kmeans_iters = decay, beta, kmeans_iters
        self.embedding = CodebookState(jnp.zeros((num_codes, dim), jnp.float32))
        self.cluster_size = CodebookState(jnp.zeros((num_codes,), jnp.float32))
        self.initted = CodebookState(jnp.array(False))

    def nearest(self, z: jax.Array) -> jax.Array:
        """(..., d) unit vectors -> (...) int32 codeword indices."""
        w = self.embedding[...]
        z = z.astype(jnp.float32)
        d = (jnp.sum(z * z, -1, keepdims=True) + jnp.sum(w * w, -1)
             - 2 * jnp.einsum("...d,kd->...k", z, w, precision=_HI))
        return jnp.argmin(d, axis=-1).astype(jnp.int32)

    def lookup(self, ids: jax.Array) -> jax.Array:
        return self.embedding[...][ids]

    def kmeans_init(self, z: jax.Array, key: jax.Array) -> None:
        """Spherical k-means on a first batch (..., d); marks the codebook initialised."""
        z = l2_normalize(jax.lax.stop_gradient(z.astype(jnp.float32))).reshape(-1, self.dim)
        means, bins = spherical_kmeans(z, self.num_codes, key, self.kmeans_iters)
        self.embedding.set_value(means)
        self.cluster_size.set_value(bins)
        self.initted.set_value(jnp.array(True))

    def ema_update(self, z: jax.Array, ids: jax.Array) -> None:
        """EMA of the normalised mean of each code's vectors; unused codes stay."""
        z = jax.lax.stop_gradient(z.astype(jnp.float32)).reshape(-1, self.dim)
        onehot = jax.nn.one_hot(ids.reshape(-1), self.num_codes, dtype=jnp.float32)
        bins = onehot.sum(0)
        sums = jnp.dot(onehot.T, z, precision=_HI)
        self.cluster_size.set_value(self.decay * self.cluster_size[...] + (1 - self.decay) * bins)
        w = self.embedding[...]
        mean = l2_normalize(sums / jnp.maximum(bins, 1.0)[:, None])
        mean = jnp.where((bins == 0)[:, None], w, mean)
        self.embedding.set_value(l2_normalize(self.decay * w + (1 - self.decay) * mean))

    def __call__(self, z: jax.Array, *, update: bool = False, init_key: jax.Array | None = None,
                 ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """z (..., d) -> (straight-through z_q, commitment loss, ids).

        `init_key` runs k-means on this batch if the codebook is not yet
        initialised (a `lax.cond`, so it is jit-safe and free afterwards).
        `update=True` applies the EMA codebook update after quantising, as
        the official training forward does (z_q uses the pre-update codebook).
        """
        z = l2_normalize(z.astype(jnp.float32))
        if init_key is not None:
            flat = jax.lax.stop_gradient(z).reshape(-1, self.dim)
            means, bins = jax.lax.cond(
                self.initted[...],
                lambda: (self.embedding[...], self.cluster_size[...]),
                lambda: spherical_kmeans(flat, self.num_codes, init_key, self.kmeans_iters))
            self.embedding.set_value(means)
            self.cluster_size.set_value(bins)
            self.initted.set_value(jnp.array(True))
        ids = self.nearest(z)
        z_q = self.lookup(ids)
        if update:
            self.ema_update(z, ids)
        loss = self.beta * jnp.mean(jnp.square(jax.lax.stop_gradient(z_q) - z))
        return z + jax.lax.stop_gradient(z_q - z), loss, ids


class QuantizeLayer(nnx.Module):
    """Linear(D, D) -> Tanh -> Linear(D, quant_dim) (official `quantize_layer.{0,2}`)."""

    def __init__(self, dim: int, quant_dim: int, *, dtype, rngs: nnx.Rngs):
        self.linear1 = linear(dim, dim, ("embed", None), dtype=dtype, rngs=rngs)
        self.linear2 = linear(dim, quant_dim, (None, None), dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.linear2(jnp.tanh(self.linear1(x))).astype(jnp.float32)


class BEATsTokenizer(BEATsEncoder):
    """BEATs backbone + quantize layer + normalised codebook -> patch labels."""

    def __init__(self, cfg: BEATsConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        super().__init__(cfg, dtype=dtype, rngs=rngs)
        self.quantize_layer = QuantizeLayer(cfg.encoder_embed_dim, cfg.quant_dim,
                                            dtype=dtype, rngs=rngs)
        self.quantize = VectorQuantizer(cfg.quant_n, cfg.quant_dim, decay=0.99, beta=1.0)

    def quantize_input(self, fbank: jax.Array) -> jax.Array:
        """(B, T, 128) -> (B, N, quant_dim) vectors before normalisation/quantisation."""
        return self.quantize_layer(self.extract_features(fbank))

    def extract_labels(self, fbank: jax.Array) -> jax.Array:
        """(B, T, 128) normalised fbank -> (B, N) int32 codebook labels."""
        return self.quantize.nearest(l2_normalize(self.quantize_input(fbank)))


class RandomProjectionTokenizer(nnx.Module):
    """BEATs iteration-1 tokenizer: frozen random projection + random codebook.

    Each 16x16 normalised-fbank patch (time-major, as the encoder) is
    projected to `dim`, L2-normalised, and labelled with the nearest of
    `num_codes` random unit codewords. Both are `CodebookState` drawn from
    `seed`, so the same seed gives the same labels on any machine.

    `input_norm='patch'` (a deviation, off by default) standardises each
    patch (zero mean, unit variance over its 256 values) before the
    projection: on globally normalised fbank a patch's mean level is about
    two thirds of its energy, so the plain labels mostly encode level
    (docs/RESULTS.md, BEATs section).
    """

    def __init__(self, num_codes: int = 1024, dim: int = 256, patch: int = 16, *, seed: int = 0,
                 input_norm: str = "none"):
        if input_norm not in ("none", "patch"):
            raise ValueError(
                f"objective.tokenizer_input_norm={input_norm!r}: use 'none' or 'patch'")
        self.num_codes, self.patch, self.input_norm = num_codes, patch, input_norm
        kp, kc = jax.random.split(jax.random.key(seed))
        self.projection = CodebookState(
            xavier_normal(1.0)(kp, (patch * patch, dim), jnp.float32))
        self.codebook = CodebookState(
            l2_normalize(jax.random.normal(kc, (num_codes, dim), jnp.float32)))

    def extract_labels(self, fbank: jax.Array) -> jax.Array:
        """(B, T, 128) normalised fbank -> (B, N) int32 labels."""
        x = patchify(fbank.astype(jnp.float32), self.patch)
        if self.input_norm == "patch":
            x = x - x.mean(axis=-1, keepdims=True)
            x = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + 1e-5)
        x = l2_normalize(jnp.dot(x, self.projection[...], precision=_HI))
        sim = jnp.einsum("bnd,kd->bnk", x, self.codebook[...], precision=_HI)
        return jnp.argmax(sim, axis=-1).astype(jnp.int32)

    def usage(self, labels: jax.Array) -> dict[str, jax.Array]:
        """Codebook usage of a batch of labels (log it: docs/SPEC.md section 8)."""
        return codebook_usage(labels, self.num_codes)
