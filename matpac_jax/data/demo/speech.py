"""Synthetic speech from two TTS engines (flite, festival) and eight voices.

The text is random sentences of words drawn from a generic English word list
(wamerican), mixed with common function words so that the prosody is
sentence-like; no particular vocabulary. Speaking rate and (where the engine
has the knob) pitch are random per utterance; `perturb` then resamples the
audio by a random factor (a speed/vocal-tract change, as in ASR training).
"""

from __future__ import annotations

import os
import subprocess

import numpy as np
import soundfile as sf

from matpac_jax.data import audio
from matpac_jax.data.frontends import SR

FUNCTION_WORDS = (
    "the a an of and to in is it that was for on are with as at be by this from or have "
    "had not but what all were when we there can your which their said if do will each "
    "about how up out them then she many some so these would other into has more her "
    "like him see time could no make than first been its who now people my made over "
    "did down only way find use may water long little very after words called just where "
    "most know get through back much before go good new write our used me man too any "
    "day same right look think also around another came come work word must because "
    "does part even place well such here take why things help put years different away "
    "again off went old number great tell men say small every found still between name "
    "should home big give air line set own under read last never us left end along while "
    "might next sound below saw something thought both few those always looked show large "
    "often together asked house world going want school important until form food keep"
).split()
# Voices: engine -> voice -> nominal median f0 in Hz, or None where the engine
# has no pitch knob for it (flite's rms) or it is not used (festival HTS).
FLITE_F0 = {"kal": 95.0, "kal16": 95.0, "awb": 125.0, "rms": None, "slt": 165.0}
FESTIVAL_F0 = {"kal_diphone": 105.0, "ked_diphone": 105.0, "cmu_us_slt_arctic_hts": None}
WORDS_PER_SECOND = 2.0  # measured, all eight voices at stretch 1 and speed 1: 1.6-2.4
MARGIN = 1.1  # a little more text than the clip needs; a shorter one is padded


def sentence_text(rng: np.random.Generator, words, seconds: float, params: dict) -> str:
    """Random sentences lasting about `seconds` (a bit more) at the rate of `params`."""
    out, n = [], 0
    rate = WORDS_PER_SECOND * params["speed"] / params["stretch"]
    target = int(np.ceil(seconds * rate * MARGIN)) + 1
    while n < target:
        k = min(int(rng.integers(3, 15)), max(2, target - n))  # The last one ends on time.
        toks = []
        for _ in range(k):
            if rng.uniform() < 0.35:
                toks.append(FUNCTION_WORDS[rng.integers(len(FUNCTION_WORDS))])
            else:
                toks.append(words[rng.integers(len(words))])
            if rng.uniform() < 0.08 and len(toks) < k:
                toks[-1] += ","
        toks[0] = toks[0].capitalize()
        out.append(" ".join(toks).rstrip(",") + str(rng.choice([".", ".", ".", "?", "!"])))
        n += k
    return " ".join(out)


def utterance_params(rng: np.random.Generator, engine: str, voice: str) -> dict:
    """Random rate (duration stretch) and pitch (target f0 mean, std) of one utterance."""
    nominal = (FLITE_F0 if engine == "flite" else FESTIVAL_F0)[voice]
    p = {"stretch": round(float(rng.uniform(0.8, 1.3)), 3),
         "speed": round(float(np.exp(rng.uniform(np.log(0.88), np.log(1.12)))), 4)}
    if nominal is not None:
        p["f0"] = round(float(nominal * np.exp(rng.uniform(np.log(0.8), np.log(1.25)))), 1)
        p["f0_std"] = round(float(rng.uniform(0.08, 0.3) * p["f0"]), 1)
    return p


def perturb(wave: np.ndarray, sr: int, speed: float) -> np.ndarray:
    """Resamples to 16 kHz as if the audio were played `speed` times faster."""
    return audio.resample(wave.astype(np.float32), int(round(sr * speed)), SR)


def flite(program: str, voice: str, text: str, params: dict, path: str) -> np.ndarray | None:
    cmd = [program, "-voice", voice, "--setf", f"duration_stretch={params['stretch']}"]
    if "f0" in params:
        cmd += ["--setf", f"int_f0_target_mean={params['f0']}",
                "--setf", f"int_f0_target_stddev={params['f0_std']}"]
    subprocess.run(cmd + ["-t", text, "-o", path], capture_output=True, check=False, timeout=120)
    return _read(path, params["speed"])


def festival_batch(program: str, items, workdir: str) -> list[np.ndarray | None]:
    """Synthesises [(voice, text, params), ...] in one festival process."""
    lines = []
    for j, (voice, text, params) in enumerate(items):
        lines.append(f"(voice_{voice})")
        if voice.endswith("_hts"):  # hts_engine's own knobs: -r speech rate.
            lines.append(
                f"(set! hts_engine_params (append {voice}::hts_engine_params "
                f"(list (list \"-r\" {1 / params['stretch']:.3f}))))"
            )
        else:
            lines.append(f"(Parameter.set 'Duration_Stretch {params['stretch']})")
            if "f0" in params:
                lines.append(
                    f"(set! int_lr_params '((target_f0_mean {params['f0']}) "
                    f"(target_f0_std {params['f0_std']}) (model_f0_mean 170) (model_f0_std 34)))"
                )
        out = os.path.join(workdir, f"fest{j:04d}.wav")
        lines.append(f"(set! utt (Utterance Text \"{text}\"))")
        lines.append("(unwind-protect (begin (utt.synth utt) "
                     f"(utt.save.wave utt \"{out}\" 'riff)) nil)")
    script = os.path.join(workdir, "batch.scm")
    with open(script, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    subprocess.run([program, "--batch", script], capture_output=True, check=False,
                   timeout=60 + 10 * len(items), cwd=workdir)
    return [_read(os.path.join(workdir, f"fest{j:04d}.wav"), params["speed"])
            for j, (_, _, params) in enumerate(items)]


def _read(path: str, speed: float) -> np.ndarray | None:
    """The utterance, resampled to 16 kHz with the speed factor; None if absent."""
    try:
        wave, sr = sf.read(path, dtype="float32", always_2d=True)
    except (OSError, RuntimeError, sf.LibsndfileError):
        return None
    finally:
        if os.path.exists(path):
            os.remove(path)
    return perturb(wave.mean(axis=1), sr, speed)
