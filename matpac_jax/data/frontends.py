"""Numpy front ends matching the official PyTorch ones (docs/SPEC.md section 1).

All functions take a waveform (N,) or a batch (B, N) of 16 kHz float audio and
are vectorised over the batch. They compute in float32 with float64 filterbanks
(never half precision: linear mel energies reach ~1e13 for BEATs' int16 scale).
"""

from __future__ import annotations

import functools
from typing import Callable

import librosa
import numpy as np
import scipy.fft
import scipy.sparse

from matpac_jax import errors

SR = 16000
N_FFT = 400
HOP = 160
LOG_EPS = 1.1920929e-07  # float32 eps: the log floor of all three front ends.

NORM = {"matpac": (-7.056, 4.193), "m2d": (-7.1, 4.2), "beats": (15.41663, 2 * 6.55582)}
FEATURE_LAYOUT = {"matpac": "freq_time", "m2d": "freq_time", "beats": "time_freq"}
NUM_BINS = {"matpac": 80, "m2d": 80, "beats": 128}


@functools.lru_cache(maxsize=None)
def _slaney_mel() -> np.ndarray:
    return librosa.filters.mel(
        sr=SR, n_fft=N_FFT, n_mels=80, fmin=50.0, fmax=8000.0, htk=False, norm="slaney"
    ).astype(np.float32)


def _apply_bank(bank: scipy.sparse.csr_matrix, power: np.ndarray) -> np.ndarray:
    """(..., T, F) power -> (..., M, T). Sparse: the triangles cover few bins, and a
    dense BLAS matmul is slower (and thread-hungry) on small shared CPUs."""
    lead, (t, f) = power.shape[:-2], power.shape[-2:]
    out = bank @ power.reshape(-1, f).T  # (M, prod(lead) * T)
    out = np.asarray(out).reshape((bank.shape[0],) + lead + (t,))
    return np.moveaxis(out, 0, -2)


@functools.lru_cache(maxsize=None)
def _sparse(name: str) -> scipy.sparse.csr_matrix:
    bank = _slaney_mel() if name == "slaney" else _kaldi_mel_banks()
    return scipy.sparse.csr_matrix(bank)


@functools.lru_cache(maxsize=None)
def _periodic_hann() -> np.ndarray:
    return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)).astype(np.float32)


def _frames(wave: np.ndarray, length: int = N_FFT, hop: int = HOP) -> np.ndarray:
    """(..., N) -> (..., T, length) strided view, T = 1 + (N - length) // hop."""
    n = wave.shape[-1]
    if n < length:
        return np.zeros(wave.shape[:-1] + (0, length), wave.dtype)
    num = 1 + (n - length) // hop
    view = np.lib.stride_tricks.sliding_window_view(wave, length, axis=-1)
    return view[..., : (num - 1) * hop + 1 : hop, :]


def _as_float32(wave) -> np.ndarray:
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim not in (1, 2):
        raise ValueError(f"expected a waveform (N,) or a batch (B, N), got shape {wave.shape}")
    return wave


def _logmel(frames: np.ndarray) -> np.ndarray:
    spec = scipy.fft.rfft(frames * _periodic_hann(), axis=-1)
    power = spec.real**2 + spec.imag**2  # (..., T, 201) float32
    mel = _apply_bank(_sparse("slaney"), power)
    return np.log(mel + np.float32(LOG_EPS)).astype(np.float32)


def matpac_logmel(wave) -> np.ndarray:
    """MATPAC log-mel (..., 80, T): center=False, T = 1 + (N - 400) // 160."""
    return _logmel(_frames(_as_float32(wave)))


def m2d_logmel(wave) -> np.ndarray:
    """M2D log-mel (..., 80, T): center=True with reflect padding, T = 1 + N // 160."""
    wave = _as_float32(wave)
    pad = [(0, 0)] * (wave.ndim - 1) + [(N_FFT // 2, N_FFT // 2)]
    return _logmel(_frames(np.pad(wave, pad, mode="reflect")))


# --- BEATs: port of torchaudio.compliance.kaldi.fbank with BEATs' arguments. ---
_KALDI_PAD = 512


def _kaldi_mel_scale(freq):
    return 1127.0 * np.log(1.0 + np.asarray(freq, np.float64) / 700.0)


@functools.lru_cache(maxsize=None)
def _kaldi_mel_banks(num_bins: int = 128, low: float = 20.0, high: float = 8000.0) -> np.ndarray:
    """(num_bins, 257) triangular Kaldi mel filters (last FFT bin zero, as torchaudio)."""
    num_fft_bins = _KALDI_PAD // 2
    mel_low, mel_high = _kaldi_mel_scale(low), _kaldi_mel_scale(high)
    delta = (mel_high - mel_low) / (num_bins + 1)
    b = np.arange(num_bins, dtype=np.float64)[:, None]
    left, center, right = mel_low + b * delta, mel_low + (b + 1) * delta, mel_low + (b + 2) * delta
    mel = _kaldi_mel_scale(SR / _KALDI_PAD * np.arange(num_fft_bins))[None, :]
    up = (mel - left) / (center - left)
    down = (right - mel) / (right - center)
    banks = np.maximum(0.0, np.minimum(up, down))
    return np.pad(banks, ((0, 0), (0, 1))).astype(np.float32)


@functools.lru_cache(maxsize=None)
def _povey_window() -> np.ndarray:
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / (N_FFT - 1))
    return (hann**0.85).astype(np.float32)


def beats_fbank(wave) -> np.ndarray:
    """BEATs Kaldi fbank (..., T, 128) of wave * 2**15 (snip_edges, dither 0)."""
    frames = _frames(_as_float32(wave) * np.float32(2**15))
    frames = frames - frames.mean(axis=-1, keepdims=True)  # DC removal.
    prev = np.concatenate([frames[..., :1], frames[..., :-1]], axis=-1)
    frames = (frames - np.float32(0.97) * prev) * _povey_window()
    spec = scipy.fft.rfft(frames, n=_KALDI_PAD, axis=-1)
    power = spec.real**2 + spec.imag**2  # (..., T, 257)
    mel = np.swapaxes(_apply_bank(_sparse("kaldi"), power), -1, -2)
    return np.log(np.maximum(mel, np.float32(LOG_EPS))).astype(np.float32)


FRONTENDS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "matpac": matpac_logmel,
    "m2d": m2d_logmel,
    "beats": beats_fbank,
}


def check_frontend(frontend: str) -> str:
    if frontend not in FRONTENDS:
        raise errors.ConfigError(
            f"unknown frontend {frontend!r}; expected one of {sorted(FRONTENDS)}")
    return frontend


def compute(frontend: str, wave) -> np.ndarray:
    """Un-normalised features of `wave` for the named front end."""
    return FRONTENDS[check_frontend(frontend)](wave)


def num_frames(frontend: str, num_samples: int) -> int:
    """Frames the front end gives for `num_samples` samples."""
    check_frontend(frontend)
    if frontend == "m2d":
        return 1 + num_samples // HOP
    return 0 if num_samples < N_FFT else 1 + (num_samples - N_FFT) // HOP


def pad_to_frames(wave: np.ndarray, frontend: str, frames: int) -> np.ndarray:
    """`wave` (..., N) zero-padded at the end (digital silence) to the fewest
    samples `num_frames` turns into `frames` frames; as it is if it has them."""
    check_frontend(frontend)
    need = (frames - 1) * HOP if frontend == "m2d" else N_FFT + (frames - 1) * HOP
    need = max(need, 1)  # M2D's reflect padding needs one sample
    if wave.shape[-1] >= need:
        return wave
    return np.pad(wave, [(0, 0)] * (wave.ndim - 1) + [(0, need - wave.shape[-1])])


def normalize(feat, frontend: str, stats: tuple[float, float] | None = None) -> np.ndarray:
    """(feat - mean) / std with the docs/SPEC.md constants; `stats=(mean, std)` overrides (M2D norm_stats)."""
    mean, std = NORM[check_frontend(frontend)] if stats is None else stats
    return ((np.asarray(feat, np.float32) - np.float32(mean)) / np.float32(std)).astype(np.float32)
