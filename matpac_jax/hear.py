"""HEAR 2021 API (hearbenchmark.com/hear-api.html) for every checkpoint `matpac_jax.load` takes.

  model = load_model("matpac_10_2048.pt", sample_rate=48000, frame_hop_ms=40)
  scene = get_scene_embeddings(audio, model)             # (n_sounds, D)
  emb, ts = get_timestamp_embeddings(audio, model)       # (n_sounds, n_frames, D), ms

`audio` is (n_sounds, n_samples) at `model.sample_rate`, any n_samples. With
torch installed (`pip install -e '.[hear]'`) `load_model` returns a
`torch.nn.Module`, as HEAR's harness and `hear-validator` require, and the
functions take and return torch tensors; the module is a shell without
torch weights: JAX does the work (resampling and front end on the whole
batch on the host, then the checkpoint's jitted encoder on padded batches of
chunks, `inference.Embedder`). Without torch the same calls take and return
numpy arrays.

Timestamps are the centres, in ms of the input, of each frame's 16
front-end frames, evenly spaced (HEAR's validator requires it) and inside the
clip: frames whose window centre lies past the clip's end (windows the
padding of the last patch fills more than half) are left out of the
timestamp embeddings; a clip shorter than the first centre (75 ms for M2D,
87.5 ms for MATPAC and BEATs) keeps its one frame, stamped at the clip's
middle. Scene embeddings are `Embedder.clip_embeddings`: the mean of the
native 160 ms frames, all of them, whatever `frame_hop_ms` is.

Any length from one sample works: short clips are zero-padded as
`inference` documents (BEATs to 2,800 samples at 16 kHz, one patch row).

Loading this module sets XLA_PYTHON_CLIENT_PREALLOCATE=false unless it is
set (`matpac_jax.torch_shell`): HEAR's harness runs torch on the same GPU.

`frame_hop_ms` (10, 20, 40, 80 or 160): finer timestamp embeddings without
retraining by **overlapping windows of the patch grid**: the encoder also
runs on the features shifted by 1, 2, ... hops, and the frames of all shifts
interleave. Each frame is an exact encoder output for the 160 ms window it
names (no interpolation), at 160 / frame_hop_ms times the encoder compute.
Frames run up to the last native frame's start, so no shifted window holds
more padding than the native grid's (a shifted input does end in its shift,
< 16 frames, of zeros, which the encoder sees as context). At 160 ms the
result is the default path's frames (less any centred past the clip's end).
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import numpy as np

from matpac_jax import torch_shell  # first: JAX's GPU memory settings (module docstring)
from matpac_jax import inference, storage
from matpac_jax.data import audio as audio_lib
from matpac_jax.data import frontends

SAMPLE_RATES = (16000, 22050, 32000, 44100, 48000)
FRAME_HOPS_MS = (10, 20, 40, 80, 160)
PATCH_FRAMES = 16  # both families patch time in 16 front-end frames (docs/SPEC.md 2, 8)
# Centre of front-end frame k, ms: 10 k + offset (centre=False: the 400-sample
# window starts at 160 k; M2D's centre=True window is centred on 160 k).
FRAME_OFFSET_MS = {"matpac": 12.5, "beats": 12.5, "m2d": 0.0}


@dataclasses.dataclass
class HearModel:
    """An `inference.Embedder` with HEAR's attributes (numpy in and out)."""

    embedder: Any
    sample_rate: int
    frame_hop_ms: int
    scene_embedding_size: int = 0
    timestamp_embedding_size: int = 0

    def __post_init__(self):
        if self.sample_rate not in SAMPLE_RATES:
            raise ValueError(f"sample_rate={self.sample_rate!r} not supported; "
                             f"supported: {SAMPLE_RATES}")
        if self.frame_hop_ms not in FRAME_HOPS_MS:
            raise ValueError(f"frame_hop_ms={self.frame_hop_ms!r} not supported: it must "
                             f"divide the 160 ms patch in 10 ms frames, one of {FRAME_HOPS_MS}")
        probe = self.scene(np.zeros((1, self.sample_rate), np.float32))
        self.scene_embedding_size = self.timestamp_embedding_size = int(probe.shape[-1])

    # -- numpy API -----------------------------------------------------------
    def features(self, audio: np.ndarray) -> np.ndarray:
        """(N, n_samples) at sample_rate -> (N, ...) normalised front-end features."""
        audio = _check_audio(audio, self.sample_rate)
        if self.sample_rate != frontends.SR:  # soxr resamples the (samples, channels) block
            audio = np.ascontiguousarray(
                audio_lib.resample(np.ascontiguousarray(audio.T), self.sample_rate,
                                   frontends.SR).T)
        return self.embedder.front_end(audio)

    @property
    def _time_axis(self) -> int:
        return 1 if frontends.FEATURE_LAYOUT[self.embedder.frontend] == "time_freq" else 2

    def scene(self, audio: np.ndarray) -> np.ndarray:
        frames = self.embedder.frames_of_features(list(self.features(audio)))
        return np.stack([f.mean(axis=0) for f in frames]).astype(np.float32)

    def frames(self, audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, n_samples) -> ((N, count, D) frames every `frame_hop_ms`, (count,)
        front-end frame where each one's 16-frame window starts), up to the last
        native frame's start (which may hold padding past the clip's end)."""
        feats = self.features(audio)
        n_sounds, ax = feats.shape[0], self._time_axis
        hop = self.frame_hop_ms // 10  # front-end frames per output frame
        shifts = range(0, PATCH_FRAMES, hop)
        # Every shift of every sound in one list: one batched encoder pass.
        shifted = [_shift(f, s, ax - 1) for s in shifts for f in feats]
        frames = np.stack(self.embedder.frames_of_features(shifted))  # (S*N, n, D)
        n, d = frames.shape[1:]
        frames = frames.reshape(len(shifts), n_sounds, n, d).transpose(1, 2, 0, 3)
        count = (n - 1) * len(shifts) + 1  # up to the last native frame's start
        emb = frames.reshape(n_sounds, n * len(shifts), d)[:, :count]
        return np.ascontiguousarray(emb, np.float32), np.arange(count) * hop

    def timestamps(self, audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`frames` whose centre lies inside the clip, and the centres in ms."""
        emb, starts = self.frames(audio)
        offset = FRAME_OFFSET_MS[self.embedder.frontend]
        centre_ms = (starts + (PATCH_FRAMES - 1) / 2) * 10.0 + offset
        duration_ms = 1000.0 * np.shape(audio)[1] / self.sample_rate
        count = max(1, int(np.count_nonzero(centre_ms <= duration_ms)))
        centre_ms = centre_ms[:count] if centre_ms[0] <= duration_ms else [duration_ms / 2]
        ts = np.broadcast_to(np.asarray(centre_ms, np.float32), (emb.shape[0], count))
        return np.ascontiguousarray(emb[:, :count]), np.ascontiguousarray(ts)


def _shift(feat: np.ndarray, s: int, axis: int) -> np.ndarray:
    """Features advanced by `s` frames along `axis`, zero-padded at the end
    (zeros after normalisation: the padding of `inference.Embedder`)."""
    if s == 0:
        return feat
    out = np.zeros_like(feat)
    src = [slice(None)] * feat.ndim
    dst = [slice(None)] * feat.ndim
    src[axis], dst[axis] = slice(s, None), slice(None, max(feat.shape[axis] - s, 0))
    out[tuple(dst)] = feat[tuple(src)]
    return out


def _check_audio(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    audio = np.asarray(audio)
    if audio.ndim != 2:
        raise ValueError(f"HEAR audio must be (n_sounds, n_samples), got shape {audio.shape}")
    if audio.shape[0] == 0:
        raise ValueError("HEAR audio batch is empty (n_sounds = 0)")
    if audio.shape[1] == 0:
        raise ValueError("HEAR audio has no samples (n_samples = 0)")
    if not np.issubdtype(audio.dtype, np.floating):
        raise ValueError(f"HEAR audio must be float in [-1, 1], got dtype {audio.dtype}")
    audio = audio.astype(np.float32, copy=False)
    bad = ~np.isfinite(audio).all(axis=1)
    if bad.any():
        raise ValueError("HEAR audio has NaN or inf samples in sounds "
                         f"{np.flatnonzero(bad)[:10].tolist()}")
    return audio


# -- torch shell (the `hear` extra) -------------------------------------------
@functools.cache
def _torch_module_class():
    import torch  # the optional `hear` extra: only HEAR's torch harness needs it

    class HearTorchModule(torch.nn.Module):
        """What HEAR requires: a torch.nn.Module with the model's attributes.
        No torch parameters: the JAX `HearModel` does the work."""

        def __init__(self, core: HearModel):
            super().__init__()
            self.core = core
            self.sample_rate = core.sample_rate
            self.scene_embedding_size = core.scene_embedding_size
            self.timestamp_embedding_size = core.timestamp_embedding_size

        def forward(self, audio):
            return get_scene_embeddings(audio, self)

    return HearTorchModule


def _core(model) -> HearModel:
    core = getattr(model, "core", model)
    if not isinstance(core, HearModel):
        raise ValueError("expected a model from matpac_jax.hear.load_model, "
                         f"got {type(model).__name__}")
    return core


# -- the HEAR functions -----------------------------------------------------------
def load_model(model_file_path: str | os.PathLike = "", *, sample_rate: int = 16000,
               frame_hop_ms: int = 160, freq_tokens: str | None = None,
               batch_size: int = 16, torch_module: bool | None = None):
    """The HEAR model of a checkpoint: an official M2D / MATPAC / BEATs .pt/.pth
    file or a training workdir (anything `matpac_jax.load` takes).

    sample_rate: the rate of the audio you pass (16000, 22050, 32000, 44100,
    48000), resampled to 16 kHz. frame_hop_ms: timestamp spacing (module
    docstring). freq_tokens: `matpac_jax.load`'s. torch_module: return the
    torch shell (default: when torch is installed).
    """
    if not model_file_path:
        raise ValueError("matpac_jax.hear.load_model needs a checkpoint: an official "
                         "M2D/MATPAC/BEATs .pt/.pth file or a training workdir")
    if sample_rate not in SAMPLE_RATES:  # before loading weights
        raise ValueError(f"sample_rate={sample_rate!r} not supported; supported: {SAMPLE_RATES}")
    if not storage.exists(model_file_path):
        raise ValueError(f"{model_file_path}: no such checkpoint file or workdir")
    embedder = inference.load(model_file_path, batch_size=batch_size, freq_tokens=freq_tokens)
    core = HearModel(embedder, sample_rate, frame_hop_ms)
    if torch_module is None:
        torch_module = torch_shell.torch_available()
    return _torch_module_class()(core) if torch_module else core


def get_scene_embeddings(audio, model):
    """(n_sounds, n_samples) -> (n_sounds, scene_embedding_size) float32."""
    return torch_shell.like(_core(model).scene(torch_shell.to_numpy(audio)), audio)


def get_timestamp_embeddings(audio, model):
    """(n_sounds, n_samples) -> ((n_sounds, n_frames, D) float32, (n_sounds, n_frames)
    frame centres in ms, evenly spaced `frame_hop_ms` apart, within [0, duration])."""
    emb, ts = _core(model).timestamps(torch_shell.to_numpy(audio))
    return torch_shell.like(emb, audio), torch_shell.like(ts, audio)
