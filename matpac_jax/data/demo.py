"""Procedural labelled sounds, so the package demos and tests need no downloads.

Eight classes with random parameters per clip (seeded): harmonic tones of
different timbres, chirps, AM/FM tones, filtered noise bursts, click trains and
chords; 16 kHz, 6.5-8 s (>= 608 frames for every front end).

  python -m matpac_jax.data.demo --output DIR --frontend matpac
"""
from __future__ import annotations

import argparse
import csv
import json
import os

import numpy as np
import scipy.signal
import soundfile as sf

SR = 16000
CLASSES = ("harmonic", "square", "chirp", "am_tone", "fm_tone", "noise_burst", "clicks", "chord")


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


def synthesize(label: str, rng: np.random.Generator, seconds: float) -> np.ndarray:
  """One clip of class `label` with random parameters."""
  n = int(SR * seconds)
  t = np.arange(n) / SR
  f0 = rng.uniform(80, 800)
  if label == "harmonic":  # Decaying partials: plucked/bell-like timbres.
    amps = rng.uniform(0.1, 1, 8) / np.arange(1, 9) ** rng.uniform(0.5, 2)
    x = sum(a * np.sin(2 * np.pi * f0 * (k + 1) * t + rng.uniform(0, 6)) for k, a in enumerate(amps))
    x = x * _env(n, rng)
  elif label == "square":  # Odd harmonics: reed/square timbre with vibrato.
    vib = 1 + 0.01 * np.sin(2 * np.pi * rng.uniform(3, 7) * t)
    x = scipy.signal.square(2 * np.pi * np.cumsum(f0 * vib) / SR, duty=rng.uniform(0.2, 0.5))
    x = x * _env(n, rng)
  elif label == "chirp":
    f1 = rng.uniform(100, 7000)
    x = scipy.signal.chirp(t, f0, seconds, f1, method=rng.choice(["linear", "logarithmic"]))
  elif label == "am_tone":
    x = (1 + rng.uniform(0.5, 1) * np.sin(2 * np.pi * rng.uniform(2, 30) * t)) * np.sin(2 * np.pi * f0 * 2 * t)
  elif label == "fm_tone":
    beta = rng.uniform(1, 10)
    x = np.sin(2 * np.pi * f0 * 2 * t + beta * np.sin(2 * np.pi * rng.uniform(50, 400) * t))
  elif label == "noise_burst":
    lo = rng.uniform(100, 3000)
    sos = scipy.signal.butter(4, [lo, min(lo * rng.uniform(1.5, 4), 7800)], "bandpass", fs=SR, output="sos")
    x = scipy.signal.sosfilt(sos, rng.standard_normal(n))
    gate = (rng.uniform(size=int(seconds * 4)) < 0.6).repeat(SR // 4)[:n]
    x = x * np.pad(gate, (0, n - gate.size))
  elif label == "clicks":
    x = np.zeros(n)
    period = int(SR / rng.uniform(2, 40))
    x[rng.integers(0, period)::period] = 1.0
    x = scipy.signal.lfilter([1.0], [1.0, -rng.uniform(0.5, 0.97)], x)
  elif label == "chord":
    chords = ([1, 1.25, 1.5], [1, 1.2, 1.5], [1, 1.25, 1.5, 1.875], [1, 1.333, 1.667])
    ratios = chords[rng.integers(len(chords))]
    x = sum(np.sin(2 * np.pi * f0 * r * t) + 0.3 * np.sin(4 * np.pi * f0 * r * t) for r in ratios)
    x = x * _env(n, rng)
  else:
    raise ValueError(f"unknown demo class {label!r}; expected one of {CLASSES}")
  x = x + 10 ** rng.uniform(-4, -2) * rng.standard_normal(n)  # Background noise.
  return (0.5 * x / max(np.abs(x).max(), 1e-9)).astype(np.float32)


def write_demo_audio(directory: str, num_clips: int = 64, seed: int = 0) -> str:
  """Writes `num_clips` wavs (classes round-robin) and meta.csv; returns the CSV path."""
  os.makedirs(os.path.join(directory, "audio"), exist_ok=True)
  rng = np.random.default_rng(seed)
  rows = []
  for i in range(num_clips):
    label = CLASSES[i % len(CLASSES)]
    clip_rng = np.random.default_rng([seed, i])
    wave = synthesize(label, clip_rng, seconds=float(rng.uniform(6.5, 8.0)))
    rel = f"audio/{i:05d}_{label}.wav"
    sf.write(os.path.join(directory, rel), wave, SR, subtype="PCM_16")
    rows.append({"file": rel, "label": label})
  path = os.path.join(directory, "meta.csv")
  with open(path, "w", newline="", encoding="utf-8") as f:
    writer = csv.DictWriter(f, ["file", "label"])
    writer.writeheader()
    writer.writerows(rows)
  return path


def ensure_demo_shards(directory: str, frontend: str, num_clips: int = 64, seed: int = 0) -> str:
  """Shards of the demo set under `directory` (made once, then reused); returns the shard dir."""
  from matpac_jax.data import prepare  # pylint: disable=g-import-not-at-top
  shard_dir = os.path.join(directory, f"shards_{frontend}")
  manifest = os.path.join(shard_dir, "manifest.json")
  tag = {"num_clips": num_clips, "seed": seed}
  tag_path = os.path.join(directory, "demo.json")
  if os.path.exists(manifest) and os.path.exists(tag_path):
    with open(tag_path, encoding="utf-8") as f:
      if json.load(f) == tag:
        return shard_dir
  csv_path = os.path.join(directory, "meta.csv")
  if not (os.path.exists(csv_path) and os.path.exists(tag_path)
          and json.load(open(tag_path, encoding="utf-8")) == tag):
    write_demo_audio(directory, num_clips, seed)
    if os.path.isdir(shard_dir):  # Shards of other demo audio: start over.
      for f in os.listdir(shard_dir):
        os.remove(os.path.join(shard_dir, f))
    with open(tag_path, "w", encoding="utf-8") as f:
      json.dump(tag, f)
  prepare.prepare(csv_path, shard_dir, frontend, num_shards=max(1, num_clips // 256))
  return shard_dir


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--output", required=True)
  p.add_argument("--frontend", default="matpac", choices=("matpac", "m2d", "beats"))
  p.add_argument("--num_clips", type=int, default=64)
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args(argv)
  print(ensure_demo_shards(args.output, args.frontend, args.num_clips, args.seed))


if __name__ == "__main__":
  main()
