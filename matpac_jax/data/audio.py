"""Audio decoding to 16 kHz mono float32, with one clear error for bad files."""

from __future__ import annotations

import os
import warnings

import numpy as np
import soundfile as sf


class AudioDecodeError(RuntimeError):
    """A file that cannot be used as audio (unreadable, empty, NaN/inf)."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path, self.reason = os.fspath(path), reason
        super().__init__(f"cannot decode audio {self.path}: {reason}")


def _read_soundfile(path: str) -> tuple[np.ndarray, int]:
    wave, sr = sf.read(path, dtype="float32", always_2d=True)
    return wave.mean(axis=1), sr


def _read_librosa(path: str) -> tuple[np.ndarray, int]:
    import librosa  # slow import, rare path

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "PySoundFile failed. Trying audioread instead."
        wave, sr = librosa.load(path, sr=None, mono=True, dtype=np.float32)
    return wave, int(sr)


def resample(wave: np.ndarray, orig_sr: int, sr: int) -> np.ndarray:
    """Same as librosa.resample(res_type='soxr_hq')."""
    if orig_sr == sr:
        return wave
    import soxr

    return soxr.resample(wave, orig_sr, sr, quality="HQ").astype(np.float32)


def load_audio(path: str | os.PathLike, sr: int = 16000) -> np.ndarray:
    """Decodes any soundfile/audioread format to mono float32 at `sr` Hz."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise AudioDecodeError(path, "no such file")
    if os.path.getsize(path) == 0:
        raise AudioDecodeError(path, "empty file")
    try:
        wave, orig_sr = _read_soundfile(path)
    except Exception as sf_err:
        try:
            wave, orig_sr = _read_librosa(path)
        except Exception as err:
            raise AudioDecodeError(
                path, f"unreadable ({sf_err}; fallback: {type(err).__name__}: {err})"
            ) from err
    if wave.size == 0:
        raise AudioDecodeError(path, "no samples")
    if not np.all(np.isfinite(wave)):
        raise AudioDecodeError(path, "contains NaN or inf samples")
    return np.ascontiguousarray(resample(wave, orig_sr, sr), dtype=np.float32)
