"""Audio decoding to 16 kHz mono float32, with one clear error for bad files."""

from __future__ import annotations

import os
import warnings

import numpy as np
import soundfile as sf

from matpac_jax import errors


class AudioDecodeError(errors.AudioError, RuntimeError):
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


def check_files(paths: list[str], what: str, show: int = 5) -> None:
    """Before any work: raise errors.AudioError listing the first `show` of the
    files that are missing, empty, or (formats soundfile reads) whose header
    does not parse, and how many there are. Full decoding is left to
    `load_audio`, which names a file that still fails."""
    readable = {f".{fmt.lower()}" for fmt in sf.available_formats()}
    bad = []
    for path in paths:
        path = os.fspath(path)
        if not os.path.isfile(path):
            bad.append(f"{path} (no such file)")
        elif os.path.getsize(path) == 0:
            bad.append(f"{path} (empty file)")
        elif os.path.splitext(path)[1].lower() in readable:
            try:
                sf.info(path)
            except Exception as err:
                bad.append(f"{path} (unreadable: {str(err).splitlines()[0] if str(err) else err!r})")
    if bad:
        more = f", and {len(bad) - show} more" if len(bad) > show else ""
        raise errors.AudioError(f"{what}: {len(bad)} of {len(paths)} audio files cannot be "
                                f"used: {', '.join(bad[:show])}{more}")


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
