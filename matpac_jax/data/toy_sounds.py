"""Procedural toy sounds: quick labelled waveforms for unit tests and notebooks.

`synthesize(label, rng, seconds)` makes one clip of one of twelve classes with
random parameters (seeded): harmonic tones of different timbres, chirps,
AM/FM tones, filtered noise bursts, click trains, chords (`CLASSES`), and the
speech-, string-, drum- and melody-like `MORE_CLASSES` (formant-filtered pulse
trains, Karplus-Strong plucks, drum patterns, note sequences). 16 kHz float32.

These are toys, NOT the demo pre-training data: that is the rendered corpus
of `matpac_jax.data.demo` (docs/DEMO_DATA.md).
"""

from __future__ import annotations

import numpy as np
import scipy.signal

from matpac_jax.data.frontends import SR

CLASSES = ("harmonic", "square", "chirp", "am_tone", "fm_tone", "noise_burst", "clicks", "chord")
MORE_CLASSES = ("voice", "pluck", "drums", "melody")
ALL_CLASSES = CLASSES + MORE_CLASSES
# (F1, F2, F3) in Hz of five vowels: a, e, i, o, u.
_VOWELS = (
    (730, 1090, 2440),
    (530, 1840, 2480),
    (270, 2290, 3010),
    (570, 840, 2410),
    (300, 870, 2240),
)


def _env(n: int, rng: np.random.Generator) -> np.ndarray:
    """Attack/decay envelope with a random number of notes."""
    env = np.zeros(n)
    for _ in range(rng.integers(1, 5)):
        start, length = rng.integers(0, n // 2), rng.integers(n // 4, n)
        seg = np.exp(-np.arange(length) / (length * rng.uniform(0.2, 0.8)))
        seg[: min(200, length)] *= np.linspace(0, 1, min(200, length))
        end = min(n, start + length)
        env[start:end] += seg[: end - start]
    return env / max(env.max(), 1e-6)


def _resonate(x: np.ndarray, freqs, bandwidth: float) -> np.ndarray:
    """Cascade of two-pole resonators (formants)."""
    for f in freqs:
        r = np.exp(-np.pi * bandwidth / SR)
        x = scipy.signal.lfilter([1 - r], [1, -2 * r * np.cos(2 * np.pi * f / SR), r * r], x)
    return x


def _voice(n: int, rng: np.random.Generator) -> np.ndarray:
    """Syllables: a glottal-like pulse train with an intonation contour through
    vowel formants, some with a fricative onset, separated by short pauses."""
    t = np.arange(n) / SR
    f0 = rng.uniform(90, 260) * (
        1 + 0.15 * np.sin(2 * np.pi * rng.uniform(0.2, 1.5) * t + rng.uniform(0, 6))
    )
    source = scipy.signal.sawtooth(2 * np.pi * np.cumsum(f0) / SR)
    source = scipy.signal.lfilter([1.0], [1.0, -0.9], np.diff(source, prepend=0.0))  # spectral tilt
    scale = rng.uniform(0.85, 1.2)  # vocal-tract length
    x, pos = np.zeros(n), int(rng.integers(0, SR // 4))
    while pos < n:
        length = int(rng.uniform(0.12, 0.4) * SR)
        end = min(n, pos + length)
        seg = _resonate(
            source[pos:end], [f * scale for f in _VOWELS[rng.integers(5)]], rng.uniform(60, 140)
        )
        fade = min(800, len(seg) // 2)  # 50 ms attack and release
        env = np.ones(len(seg))
        env[:fade], env[len(seg) - fade :] = np.linspace(0, 1, fade), np.linspace(1, 0, fade)
        seg = seg * env
        x[pos:end] += seg / max(np.abs(seg).max(), 1e-9)
        if rng.uniform() < 0.4 and pos > 1600:  # fricative just before the vowel
            lo = rng.uniform(2000, 5000)
            sos = scipy.signal.butter(2, [lo, min(lo * 1.8, 7900)], "bandpass", fs=SR, output="sos")
            k = int(rng.uniform(0.04, 0.1) * SR)
            x[pos - k : pos] += (
                0.3 * scipy.signal.sosfilt(sos, rng.standard_normal(k)) * np.hanning(k)
            )
        pos = end + int(rng.uniform(0.02, 0.25) * SR)
    return x


def _pluck(n: int, rng: np.random.Generator) -> np.ndarray:
    """Karplus-Strong plucked strings: notes of a random scale."""
    x, pos = np.zeros(n), 0
    base = rng.uniform(80, 400)
    while pos < n:
        f = base * 2 ** (rng.integers(0, 13) / 12)
        delay = max(2, int(SR / f))
        decay = rng.uniform(0.985, 0.999)
        a = np.zeros(delay + 2)
        a[0], a[delay], a[delay + 1] = 1.0, -decay / 2, -decay / 2
        length = min(n - pos, int(rng.uniform(0.2, 1.2) * SR))
        burst = np.zeros(length)
        burst[: min(delay, length)] = rng.uniform(-1, 1, min(delay, length))
        x[pos : pos + length] += scipy.signal.lfilter([1.0], a, burst)
        pos += int(rng.uniform(0.1, 0.8) * SR)
    return x


def _drums(n: int, rng: np.random.Generator) -> np.ndarray:
    """Kick, snare and hi-hat on a 16th-note grid with a random pattern."""
    step = int(SR * 60 / rng.uniform(70, 160) / 4)
    hits = {k: rng.uniform(size=16) < p for k, p in (("kick", 0.3), ("snare", 0.2), ("hat", 0.6))}
    hat_sos = scipy.signal.butter(2, rng.uniform(5000, 7000), "highpass", fs=SR, output="sos")
    x = np.zeros(n)
    for i, pos in enumerate(range(0, n, step)):
        k = min(n - pos, SR // 2)
        tt = np.arange(k) / SR
        if hits["kick"][i % 16]:
            x[pos : pos + k] += np.sin(
                2 * np.pi * np.cumsum(50 + 100 * np.exp(-tt * 30)) / SR
            ) * np.exp(-tt * 8)
        if hits["snare"][i % 16]:
            x[pos : pos + k] += (
                0.6 * rng.standard_normal(k) + np.sin(2 * np.pi * 190 * tt)
            ) * np.exp(-tt * 20)
        if hits["hat"][i % 16]:
            x[pos : pos + k] += (
                0.4 * scipy.signal.sosfilt(hat_sos, rng.standard_normal(k)) * np.exp(-tt * 60)
            )
    return x


def _melody(n: int, rng: np.random.Generator) -> np.ndarray:
    """Notes of a random-walk melody with one random harmonic timbre."""
    amps = rng.uniform(0, 1, 10) * np.arange(1, 11) ** -rng.uniform(0.3, 2.0)
    x, pos, note = np.zeros(n), 0, 0
    base = rng.uniform(110, 440)
    while pos < n:
        length = min(n - pos, int(rng.uniform(0.1, 0.5) * SR))
        note = int(np.clip(note + rng.integers(-3, 4), -7, 12))
        f = base * 2 ** (note / 12)
        tt = np.arange(length) / SR
        tone = sum(
            a * np.sin(2 * np.pi * f * (k + 1) * tt)
            for k, a in enumerate(amps)
            if f * (k + 1) < 7900
        )
        env = np.minimum(1, tt / 0.01) * np.exp(-tt * rng.uniform(1, 8))
        x[pos : pos + length] += tone * env
        pos += length
    return x


def synthesize(
    label: str, rng: np.random.Generator, seconds: float, mix: bool = False
) -> np.ndarray:
    """One clip of class `label` with random parameters; `mix`: with
    probability 0.4 add a quieter (-6 to -24 dB) clip of another class."""
    n = int(SR * seconds)
    t = np.arange(n) / SR
    f0 = rng.uniform(80, 800)
    if label == "harmonic":  # Decaying partials: plucked/bell-like timbres.
        amps = rng.uniform(0.1, 1, 8) / np.arange(1, 9) ** rng.uniform(0.5, 2)
        x = sum(
            a * np.sin(2 * np.pi * f0 * (k + 1) * t + rng.uniform(0, 6)) for k, a in enumerate(amps)
        )
        x = x * _env(n, rng)
    elif label == "square":  # Odd harmonics: reed/square timbre with vibrato.
        vib = 1 + 0.01 * np.sin(2 * np.pi * rng.uniform(3, 7) * t)
        x = scipy.signal.square(2 * np.pi * np.cumsum(f0 * vib) / SR, duty=rng.uniform(0.2, 0.5))
        x = x * _env(n, rng)
    elif label == "chirp":
        f1 = rng.uniform(100, 7000)
        x = scipy.signal.chirp(t, f0, seconds, f1, method=rng.choice(["linear", "logarithmic"]))
    elif label == "am_tone":
        x = (1 + rng.uniform(0.5, 1) * np.sin(2 * np.pi * rng.uniform(2, 30) * t)) * np.sin(
            2 * np.pi * f0 * 2 * t
        )
    elif label == "fm_tone":
        beta = rng.uniform(1, 10)
        x = np.sin(2 * np.pi * f0 * 2 * t + beta * np.sin(2 * np.pi * rng.uniform(50, 400) * t))
    elif label == "noise_burst":
        lo = rng.uniform(100, 3000)
        sos = scipy.signal.butter(
            4, [lo, min(lo * rng.uniform(1.5, 4), 7800)], "bandpass", fs=SR, output="sos"
        )
        x = scipy.signal.sosfilt(sos, rng.standard_normal(n))
        gate = (rng.uniform(size=int(seconds * 4)) < 0.6).repeat(SR // 4)[:n]
        x = x * np.pad(gate, (0, n - gate.size))
    elif label == "clicks":
        x = np.zeros(n)
        period = int(SR / rng.uniform(2, 40))
        x[rng.integers(0, period) :: period] = 1.0
        x = scipy.signal.lfilter([1.0], [1.0, -rng.uniform(0.5, 0.97)], x)
    elif label in MORE_CLASSES:
        x = {"voice": _voice, "pluck": _pluck, "drums": _drums, "melody": _melody}[label](n, rng)
    elif label == "chord":
        chords = ([1, 1.25, 1.5], [1, 1.2, 1.5], [1, 1.25, 1.5, 1.875], [1, 1.333, 1.667])
        ratios = chords[rng.integers(len(chords))]
        x = sum(
            np.sin(2 * np.pi * f0 * r * t) + 0.3 * np.sin(4 * np.pi * f0 * r * t) for r in ratios
        )
        x = x * _env(n, rng)
    else:
        raise ValueError(f"unknown toy sound class {label!r}; expected one of {ALL_CLASSES}")
    x = x / max(np.abs(x).max(), 1e-9)
    if mix and rng.uniform() < 0.4:
        other = ALL_CLASSES[rng.integers(len(ALL_CLASSES))]
        x = x + 10 ** -rng.uniform(0.3, 1.2) * synthesize(other, rng, seconds) / 0.5
    x = x + 10 ** rng.uniform(-4, -2) * rng.standard_normal(n)  # Background noise.
    return (0.5 * x / max(np.abs(x).max(), 1e-9)).astype(np.float32)
