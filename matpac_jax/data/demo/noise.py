"""Background-noise beds: coloured noise, band-limited, gusting, crackle, hum."""

from __future__ import annotations

import numpy as np
import scipy.fft
import scipy.interpolate
import scipy.signal

from matpac_jax.data.frontends import SR


def _smooth_random(rng: np.random.Generator, n: int, rate_hz: float) -> np.ndarray:
    """A slowly varying random curve in [0, 1] (cubic through random points)."""
    k = max(4, int(n / SR * rate_hz) + 4)
    pts = rng.uniform(0, 1, k)
    x = np.linspace(0, k - 3, n)
    return np.clip(scipy.interpolate.CubicSpline(np.arange(k), pts)(x), 0, 1)


def noise_bed(rng: np.random.Generator, seconds: float) -> tuple[np.ndarray, dict]:
    """(float32 noise, description): 1/f^alpha noise with random extras."""
    n = int(round(seconds * SR))
    alpha = float(rng.choice([0.0, 1.0, 2.0, -1.0, rng.uniform(-1.0, 2.5)]))
    m = scipy.fft.next_fast_len(n, real=True)
    spec = scipy.fft.rfft(rng.standard_normal(m))
    spec *= np.maximum(np.fft.rfftfreq(m, 1 / SR), 20.0) ** (-alpha / 2)
    x = scipy.fft.irfft(spec, m)[:n]
    desc = {"alpha": round(alpha, 2)}
    if rng.uniform() < 0.4:  # Band-limited (e.g. distant traffic, hiss, rumble).
        lo = float(np.exp(rng.uniform(np.log(40), np.log(2000))))
        hi = min(7800.0, lo * float(np.exp(rng.uniform(np.log(2), np.log(40)))))
        x = scipy.signal.sosfilt(scipy.signal.butter(2, [lo, hi], "bandpass", fs=SR,
                                                     output="sos"), x)
        desc["band"] = [round(lo), round(hi)]
    x /= np.std(x) + 1e-12
    if rng.uniform() < 0.5:  # Gusts / swells.
        depth = rng.uniform(0.3, 0.95)
        x *= 1 - depth * _smooth_random(rng, n, rng.uniform(0.2, 3.0))
        desc["gusts"] = round(float(depth), 2)
    if rng.uniform() < 0.25:  # Crackle / rain: sparse filtered impulses.
        clicks = np.zeros(n)
        m = int(rng.uniform(5, 300) * seconds)
        clicks[rng.integers(0, n, m)] = rng.standard_normal(m) * rng.uniform(3, 12)
        clicks = scipy.signal.lfilter([1.0], [1.0, -rng.uniform(0.3, 0.95)], clicks)
        x += clicks
        desc["crackle"] = m
    if rng.uniform() < 0.15:  # Mains hum with harmonics.
        f0 = float(rng.choice([50.0, 60.0]))
        t = np.arange(n) / SR
        x += rng.uniform(0.2, 1.5) * sum(
            rng.uniform(0, 1) / k * np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6))
            for k in range(1, 8)
        )
        desc["hum"] = f0
    return x.astype(np.float32), desc
