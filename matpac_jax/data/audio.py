"""Audio decoding to 16 kHz mono float32, with one clear error for bad files."""

from __future__ import annotations

import io
import os
import re
import tempfile
import warnings

import librosa
import numpy as np
import soundfile as sf
import soxr

from matpac_jax import errors, storage


class AudioDecodeError(errors.AudioError, RuntimeError):
    """A file that cannot be used as audio (unreadable, empty, NaN/inf)."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path, self.reason = os.fspath(path), reason
        super().__init__(f"cannot decode audio {self.path}: {reason}")


def _read_soundfile(source) -> tuple[np.ndarray, int]:
    wave, sr = sf.read(source, dtype="float32", always_2d=True)
    return wave.mean(axis=1), sr


def _read_librosa(path: str) -> tuple[np.ndarray, int]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "PySoundFile failed. Trying audioread instead."
        wave, sr = librosa.load(path, sr=None, mono=True, dtype=np.float32)
    return wave, int(sr)


def resample(wave: np.ndarray, orig_sr: int, sr: int) -> np.ndarray:
    """Same as librosa.resample(res_type='soxr_hq')."""
    if orig_sr == sr:
        return wave
    return soxr.resample(wave, orig_sr, sr, quality="HQ").astype(np.float32)


def check_files(paths: list[str], what: str, show: int = 5) -> None:
    """Before any work: raise errors.AudioError listing the first `show` of the
    files that are missing, empty, or (local files of formats soundfile reads)
    whose header does not parse, and how many there are. Full decoding is left
    to `load_audio`, which names a file that still fails. gs:// files are
    checked from one listing of each folder, not one request per file."""
    readable = {f".{fmt.lower()}" for fmt in sf.available_formats()}
    sizes = storage.sizes([os.fspath(p) for p in paths])
    bad = []
    for path in paths:
        path = os.fspath(path)
        if sizes.get(path) is None:
            bad.append(f"{path} (no such file)")
        elif sizes[path] == 0:
            bad.append(f"{path} (empty file)")
        elif not storage.is_remote(path) and os.path.splitext(path)[1].lower() in readable:
            try:
                sf.info(path)
            except Exception as err:
                bad.append(f"{path} (unreadable: {str(err).splitlines()[0] if str(err) else err!r})")
    if bad:
        more = f", and {len(bad) - show} more" if len(bad) > show else ""
        raise errors.AudioError(f"{what}: {len(bad)} of {len(paths)} audio files cannot be "
                                f"used: {', '.join(bad[:show])}{more}")


def load_audio(path: str | os.PathLike, sr: int = 16000) -> np.ndarray:
    """Decodes any soundfile/audioread format (a local or gs:// file) to mono
    float32 at `sr` Hz."""
    path = storage.check(path, "audio file")
    if storage.is_remote(path):
        try:
            data = storage.read_bytes(path)
        except FileNotFoundError:
            raise AudioDecodeError(path, "no such file") from None
        return decode(data, path, sr)
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
    return _finish(wave, orig_sr, sr, path)


def decode(data: bytes, name: str, sr: int = 16000) -> np.ndarray:
    """An encoded file's bytes (a parquet cell, a tar member, a downloaded
    object) -> mono float32 at `sr` Hz; `name` is what errors call it (its
    extension picks the fallback decoder for formats libsndfile lacks)."""
    if not data:
        raise AudioDecodeError(name, "empty file")
    try:
        wave, orig_sr = _read_soundfile(io.BytesIO(data))
    except Exception as sf_err:
        suffix = os.path.splitext(name.split("#")[0])[1] or ".bin"
        try:
            with tempfile.NamedTemporaryFile(suffix=suffix) as f:  # audioread needs a file
                f.write(data)
                f.flush()
                wave, orig_sr = _read_librosa(f.name)
        except Exception as err:
            first = re.sub(r"^Error opening <_io\.BytesIO object at 0x[0-9a-f]+>: ", "",
                           str(sf_err))
            raise AudioDecodeError(
                name, f"unreadable ({first}; fallback: {type(err).__name__}: {err})"
            ) from err
    return _finish(wave, orig_sr, sr, name)


def _finish(wave: np.ndarray, orig_sr: int, sr: int, name: str) -> np.ndarray:
    if wave.size == 0:
        raise AudioDecodeError(name, "no samples")
    if not np.all(np.isfinite(wave)):
        raise AudioDecodeError(name, "contains NaN or inf samples")
    return np.ascontiguousarray(resample(wave, orig_sr, sr), dtype=np.float32)
