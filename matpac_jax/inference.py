"""Clip and frame embeddings from any supported checkpoint (docs/SPEC.md section 6).

`load(path)` dispatches on the file's content, never on its name:
- official M2D / MATPAC state dicts -> `conversion.official` (ViT family);
- official BEATs `{'cfg', 'model'}` -> `conversion.beats.load_beats`;
- a training workdir of this project -> `methods.load_workdir`, whose
  method's `EmbeddingSpec` names the family.
Each family has its embedder class (`EMBEDDERS`); they share the front end
and the batching, and differ in how an encoder turns features into frames.

ViT family (M2D/MATPAC): normalised log-mel, zero-padded (after
normalisation) to a multiple of 16 frames, cut into chunks of the
checkpoint's time grid; the last, shorter chunk uses the time-truncated
table. Chunks of all inputs run through the encoder together in padded
batches of a few compiled shapes: batch sizes are powers of two up to
`batch_size`, chunk lengths are a few time buckets, and time padding is
masked out of attention so results equal chunk-by-chunk calls. Frame features
are `b (f t) d -> b t (f d)` per 16-frame step (160 ms); the clip embedding
is their mean over time.

BEATs family: normalised Kaldi fbank, whole clip through the encoder (no
chunking, as the official `extract_features`; `chunk_frames` cuts long clips
into 16-frame-aligned pieces); its padding mask is wrong (docs/SPEC.md
section 8), so only inputs of equal length share a batch. Frames are patch
features averaged over the 8 frequency patches; the clip embedding is the
mean over all patches.

Short waves are zero-padded at the end (digital silence) to the family's
`min_frames`: one frame for the ViT (400 samples for MATPAC's centre=False
log-mel, which the ViT then pads to 16 frames as above), one 16-frame patch
row for BEATs (2,800 samples: its snip_edges fbank has a frame only where a
whole 25 ms window fits, and its patch embedding drops leftover frames).

On XLA:CPU a padded batch runs inside its compiled call a few inputs at a
time (`lax.map` over micro-batches of about `cpu_tokens_per_step` tokens):
one 10-s input's activations stay in cache where a batch of 16 streams every
elementwise pass through memory (BEATs: ~190 MB of attention logits per
layer). Same numbers; accelerators run the whole batch at once.

`freq_tokens` picks how the frequency patches of one time step become a frame:
'concat' (F*D, the ViT default of docs/SPEC.md section 6) or 'mean' (D: the
BEATs default, and docs/SPEC.md's "768-d frame variant" for the ViT). None: the
family's default.
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Callable, ClassVar, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from matpac_jax import methods, storage
from matpac_jax.conversion import torch_pickle
from matpac_jax.conversion.beats import load_beats
from matpac_jax.conversion.official import load_official
from matpac_jax.data import audio, frontends
from matpac_jax.methods.pretrained import describe
from matpac_jax.models.codebook import BEATsTokenizer

Wave = np.ndarray | str | os.PathLike


def _pow2_at_least(n: int, cap: int) -> int:
    return min(cap, 1 << max(n - 1, 0).bit_length())


def _batched(fn: Callable, items: list[np.ndarray], extra: list[int],
             batch_size: int) -> list[np.ndarray]:
    """Run jitted `fn(x, extra)` on stacked `items` (equal shapes) in batches
    padded to a power of two, returning one output per item."""
    out = []
    for i in range(0, len(items), batch_size):
        x, e = items[i:i + batch_size], extra[i:i + batch_size]
        n = len(x)
        pad = _pow2_at_least(n, batch_size) - n
        xb = np.stack(x + [np.zeros_like(x[0])] * pad)
        eb = np.asarray(e + [e[0]] * pad, np.int32)
        y = np.asarray(fn(jnp.asarray(xb), jnp.asarray(eb)))
        out.extend(y[:n])
    return out


@dataclasses.dataclass
class Embedder:
    """Embeddings of audio at any sample rate. Build with `matpac_jax.load(path)`."""

    model: nnx.Module
    method: str                      # what the checkpoint is: 'm2d' | 'matpac' | 'beats' ...
    frontend: str                    # front end in matpac_jax.data.frontends
    norm_stats: tuple[float, float] | None
    batch_size: int = 16
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    freq_tokens: str | None = None   # 'concat' | 'mean' | None (family default)

    family: ClassVar[str]
    default_freq_tokens: ClassVar[str]
    min_frames: ClassVar[int]        # shorter waves are zero-padded to give these frames
    cpu_tokens_per_step: ClassVar[int] = 1024  # XLA:CPU micro-batch size, in patches

    def __post_init__(self):
        if self.freq_tokens is None:
            self.freq_tokens = self.default_freq_tokens
        if self.freq_tokens not in ("concat", "mean"):
            raise ValueError(f"freq_tokens must be 'concat' or 'mean', got {self.freq_tokens!r}")
        graphdef, state = nnx.split(self.model)

        def encode(st, x, e):
            grid = lambda x, e: self._patch_grid(nnx.merge(graphdef, st), x, e)
            k = self._micro_batch(x.shape)
            if k == x.shape[0]:
                return grid(x, e)
            y = jax.lax.map(lambda xe: grid(*xe), (x.reshape(-1, k, *x.shape[1:]),
                                                  e.reshape(-1, k)))
            return y.reshape(-1, *y.shape[2:])

        jitted = jax.jit(encode)
        self._encode = lambda x, e: jitted(state, x, e)

    def _micro_batch(self, shape: tuple[int, ...]) -> int:
        """Inputs per step of the compiled call: all of them off the CPU; on it,
        the largest power of two k dividing the batch with k inputs' 16 x 16
        patches within `cpu_tokens_per_step` (at least 1)."""
        if jax.default_backend() != "cpu":
            return shape[0]
        patches = math.prod(shape[1:]) // 256
        k = 1
        while shape[0] % (2 * k) == 0 and 2 * k * patches <= self.cpu_tokens_per_step:
            k *= 2
        return k

    # -- per family --------------------------------------------------------
    @staticmethod
    def _patch_grid(model: nnx.Module, x: jax.Array, extra: jax.Array) -> jax.Array:
        """Encoder output as a (B, time, freq, D) grid of patch features."""
        raise NotImplementedError

    def _frames_of(self, feats: list[np.ndarray]) -> list[np.ndarray]:
        """Normalised features of each input -> its (T_i, D) frames."""
        raise NotImplementedError

    # -- shared ------------------------------------------------------------
    @property
    def step_seconds(self) -> float:
        return 16 * frontends.HOP / frontends.SR

    def features(self, wave: Wave, sr: int = frontends.SR) -> np.ndarray:
        """Normalised front-end features of one input (layout: frontends.FEATURE_LAYOUT)."""
        if isinstance(wave, (str, os.PathLike)):
            w = audio.load_audio(wave, frontends.SR)
        else:
            w = np.asarray(wave, np.float32)
            if w.ndim != 1:
                raise ValueError(f"expected a mono 1-D waveform, got shape {w.shape}")
            w = audio.resample(w, sr, frontends.SR)
        return self.front_end(w)

    def front_end(self, waves: np.ndarray) -> np.ndarray:
        """Normalised features of (..., samples) 16 kHz waves, padded to the
        encoder's shortest input."""
        waves = frontends.pad_to_frames(waves, self.frontend, self.min_frames)
        return frontends.normalize(frontends.compute(self.frontend, waves), self.frontend,
                                   self.norm_stats)

    def _encode_groups(self, items: list[tuple[Any, np.ndarray, int]]) -> dict[Any, np.ndarray]:
        """Encoder outputs of `(key, input, extra)` items, inputs of one shape
        batched together (the compiled shapes stay few)."""
        groups: dict[tuple[int, ...], list] = {}
        for item in items:
            groups.setdefault(item[1].shape, []).append(item)
        out = {}
        for group in groups.values():
            ys = _batched(self._encode, [x for _, x, _ in group], [e for _, _, e in group],
                          self.batch_size)
            out.update((key, y) for (key, _, _), y in zip(group, ys))
        return out

    def _pool_freq(self, y: np.ndarray) -> np.ndarray:
        """(T, F, D) patch features of one input -> (T, F*D) or (T, D) frames."""
        y = np.asarray(y)
        return y.mean(axis=1) if self.freq_tokens == "mean" else y.reshape(y.shape[0], -1)

    def frames(self, waves: Sequence[Wave], sr: int = frontends.SR) -> list[np.ndarray]:
        """Frame features (T_i, D) of each input, batched across inputs."""
        return self.frames_of_features([self.features(w, sr) for w in waves])

    def frames_of_features(self, feats: Sequence[np.ndarray]) -> list[np.ndarray]:
        """`frames` of already normalised features (what `features` returns),
        for callers that compute the front end on a whole batch (matpac_jax.hear)."""
        return [np.asarray(y, np.float32) for y in self._frames_of(list(feats))]

    def frame_embeddings(self, wave: Wave, sr: int = frontends.SR
                         ) -> tuple[np.ndarray, np.ndarray]:
        """(features (T, D), timestamps (T,) in seconds: start of each 160 ms step)."""
        y = self.frames([wave], sr)[0]
        return y, np.arange(y.shape[0], dtype=np.float32) * np.float32(self.step_seconds)

    def clip_embeddings(self, waves: Sequence[Wave] | np.ndarray,
                        sr: int = frontends.SR) -> np.ndarray:
        """(N, D) float32: mean over time of each input's frame features."""
        if isinstance(waves, np.ndarray) and waves.ndim == 1:
            waves = [waves]
        return np.stack([y.mean(axis=0) for y in self.frames(list(waves), sr)]
                        ).astype(np.float32)


class ViTEmbedder(Embedder):
    """M2D / MATPAC ViT encoders: chunked log-mel, 160 ms frames."""

    family = "vit"
    default_freq_tokens = "concat"
    min_frames = 1

    @staticmethod
    def _patch_grid(enc, x, valid):
        y = enc(x, valid)[:, 1:]
        b, n, d = y.shape  # b (f t) d -> b t f d
        return y.reshape(b, enc.grid_f, n // enc.grid_f, d).transpose(0, 2, 1, 3)

    def _time_buckets(self) -> list[int]:
        unit = self.model.max_frames
        return sorted({max(16, math.ceil(unit * f / 16) * 16) for f in (0.25, 0.5, 0.75, 1.0)})

    def _frames_of(self, feats: list[np.ndarray]) -> list[np.ndarray]:
        unit, p = self.model.max_frames, self.model.patch
        buckets = self._time_buckets()
        items = []
        for i, f in enumerate(feats):
            f = np.pad(f, ((0, 0), (0, -f.shape[1] % p)))  # zeros after normalisation
            for c in range(math.ceil(f.shape[1] / unit)):
                chunk = f[:, c * unit:(c + 1) * unit]
                length = chunk.shape[1]
                b = next(b for b in buckets if b >= length)
                items.append(((i, c), np.pad(chunk, ((0, 0), (0, b - length))), length))
        ys = self._encode_groups(items)
        return _join({key: self._pool_freq(ys[key][: length // p]) for key, _, length in items},
                     len(feats))


@dataclasses.dataclass
class BEATsEmbedder(Embedder):
    """BEATs encoders: the whole fbank at once (or `chunk_frames` at a time),
    equal lengths batched together."""

    # Longest fbank stretch through the encoder at once, a multiple of 16
    # frames; None: the whole clip, as the official extract_features (its
    # attention grows with the square of the length: X-ARES's 10-min inputs).
    chunk_frames: int | None = None

    family = "beats"
    default_freq_tokens = "mean"
    min_frames = 16

    def __post_init__(self):
        if self.chunk_frames is not None and (self.chunk_frames <= 0 or self.chunk_frames % 16):
            raise ValueError(f"chunk_frames must be a positive multiple of 16 fbank frames, "
                             f"got {self.chunk_frames}")
        super().__post_init__()

    @staticmethod
    def _patch_grid(model, x, _):
        y = model.extract_features(x)
        b, n, d = y.shape  # time-major patches: b (t f) d
        return y.reshape(b, n // 8, 8, d)

    def _frames_of(self, feats: list[np.ndarray]) -> list[np.ndarray]:
        items = []
        for i, f in enumerate(feats):
            f = f[: f.shape[0] // 16 * 16]  # leftover frames are dropped
            step = self.chunk_frames or f.shape[0]
            items += [((i, c), f[c:c + step], 0) for c in range(0, f.shape[0], step)]
        ys = self._encode_groups(items)
        return _join({key: self._pool_freq(ys[key]) for key, _, _ in items}, len(feats))


def _join(parts: dict[tuple[int, int], np.ndarray], n: int) -> list[np.ndarray]:
    """Frames of chunk (i, c) for i < n, inserted in chunk order -> each input's frames."""
    per_input: list[list[np.ndarray]] = [[] for _ in range(n)]
    for (i, _), y in parts.items():
        per_input[i].append(y)
    return [np.concatenate(p) for p in per_input]


EMBEDDERS: dict[str, type[Embedder]] = {"vit": ViTEmbedder, "beats": BEATsEmbedder}


def embedder_for(method, model: nnx.Module, *, batch_size: int = 16,
                 config: dict | None = None, freq_tokens: str | None = None) -> Embedder:
    """The embedder of a `methods.Method`'s encoder in `model`."""
    spec = method.embedding
    return EMBEDDERS[spec.family](
        method.encoder(model), method.config.method, spec.frontend,
        spec.stats, batch_size,
        config if config is not None else method.config.to_dict(), freq_tokens)


def encoder_with_architecture(checkpoint: str) -> tuple[dict, nnx.Module]:
    """(architecture, encoder) of anything `load` accepts, for a model built
    around it (fine-tuning): family, front end, norm stats and the encoder's
    constructor arguments, saved with every checkpoint of such a model so
    that restoring it needs no pretrained file."""
    emb = load(checkpoint)
    encoder = emb.model
    if getattr(encoder, "predictor", None) is not None:
        encoder.predictor = None  # a fine-tuned BEATs release: keep the encoder only
    arch = dict(family=emb.family, frontend=emb.frontend, norm_stats=list(emb.norm_stats),
                encoder=describe(encoder, emb.family), source=str(checkpoint))
    return arch, encoder


def load(path_or_obj: str | os.PathLike | dict, *, batch_size: int = 16,
         dtype=jnp.float32, freq_tokens: str | None = None) -> Embedder:
    """Any supported checkpoint -> Embedder (see module docstring).

    Official files are converted to `dtype`; a workdir's model keeps the
    compute dtype it was trained with.
    """
    if isinstance(path_or_obj, (str, os.PathLike)) and storage.isdir(path_or_obj):
        method, model, _ = methods.load_workdir(os.fspath(path_or_obj))
        return embedder_for(method, model, batch_size=batch_size, freq_tokens=freq_tokens)
    obj, name = path_or_obj, None
    if isinstance(path_or_obj, (str, os.PathLike)):
        name, obj = os.fspath(path_or_obj), torch_pickle.load(path_or_obj)
    if isinstance(obj, dict) and "cfg" in obj and "model" in obj:
        model = load_beats(obj, name, dtype=dtype)
        if isinstance(model, BEATsTokenizer):
            raise ValueError(f"{name}: a BEATs tokenizer, not an encoder: no embeddings")
        return BEATsEmbedder(model, "beats", "beats", frontends.NORM["beats"], batch_size,
                             freq_tokens=freq_tokens)
    m = load_official(obj, dtype=dtype, name=name)
    return ViTEmbedder(m.encoder, m.kind, m.frontend, m.norm_stats, batch_size, m.config,
                       freq_tokens)
