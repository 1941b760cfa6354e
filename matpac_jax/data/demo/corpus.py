"""Plans, renders, mixes and writes the demo corpus; caches it per user.

`plan(num_clips, seed, sources)` decides every clip up front (kind, length,
components, gains) from the seed alone; `write_corpus` renders the components
in at most two worker threads (each drives one fluidsynth / flite / festival
process at a time), mixes each clip as soon as its parts are in and writes it
as 16 kHz mono int16 FLAC. `cached_corpus` keeps one rendered copy per
(generator version, num_clips, seed, source files) in the user cache.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import csv
import fcntl
import json
import logging
import os
import resource
import shutil
import sys
import tempfile
import threading
import time

import numpy as np
import soundfile as sf
from tqdm import tqdm

from matpac_jax.data.demo import music
from matpac_jax.data.demo import noise
from matpac_jax.data.demo import sources as sources_lib
from matpac_jax.data.demo import speech
from matpac_jax.data.frontends import SR

log = logging.getLogger(__name__)

VERSION = 4  # of the generator: bump when the audio changes (regenerates caches)
KINDS = ("music", "speech", "mixture", "drums", "noise")  # the labels
KIND_WEIGHTS = (0.34, 0.30, 0.18, 0.10, 0.08)
MIXTURES = ("music+speech", "speech+noise", "speech+speech", "music+noise", "drums+speech")
MIXTURE_WEIGHTS = (0.35, 0.25, 0.15, 0.15, 0.10)
MIN_SECONDS, MAX_SECONDS = 6.5, 10.0  # >= 608 frames for every front end
MAX_WORKERS = 2
MIDI_BATCH = {"fluidr3": 160, "musescore": 600}  # segments per fluidsynth run
FLITE_BATCH, FESTIVAL_BATCH = 24, 32  # utterances per job
SILENT_PEAK = 1e-4


def _quotas(num_clips: int, rng: np.random.Generator) -> list[str]:
    """Kinds of the clips in order: the weighted quotas (largest remainder, at
    least one of each kind when there are enough clips), one of each kind
    first so that small corpora have them all, then the rest shuffled."""
    exact = np.array(KIND_WEIGHTS) * num_clips
    counts = np.floor(exact).astype(int)
    for j in np.argsort(-(exact - counts), kind="stable")[: num_clips - counts.sum()]:
        counts[j] += 1
    for j in range(len(KINDS)):
        if counts[j] == 0 and num_clips >= len(KINDS):
            counts[np.argmax(counts)] -= 1
            counts[j] += 1
    first = [k for k, c in zip(KINDS, counts) if c > 0]
    rest = [k for k, c in zip(KINDS, counts) for _ in range(c - 1)]
    return first + [rest[j] for j in rng.permutation(len(rest))]


def plan(num_clips: int, seed: int, src: sources_lib.Sources) -> list[dict]:
    """Every clip's recipe, from the seed alone: a list of dicts with
    index, label, samples, gain_db and components [{id, type, gain_db, ...}]."""
    rng = np.random.default_rng([seed, 0x0DE30])
    kinds = _quotas(num_clips, rng)
    fonts = [sf.name for sf in src.soundfonts]
    # Voices in a seeded order that alternates the engines while both have some left.
    per_engine = [[("flite", v) for v in rng.permutation(src.flite_voices)],
                  [("festival", v) for v in rng.permutation(src.festival_voices)]]
    voice_order = []
    while any(per_engine):
        for queue in per_engine:
            if queue:
                voice_order.append(tuple(map(str, queue.pop(0))))
    counters = {"midi": int(rng.integers(len(fonts))), "tts": 0}

    def midi_comp(cid, kind, seconds):
        font = fonts[counters["midi"] % len(fonts)]
        counters["midi"] += 1
        return {"id": cid, "type": "midi", "font": font, "kind": kind, "seconds": seconds}

    def tts_comp(crng, cid, seconds, avoid=None):
        engine, voice = voice_order[counters["tts"] % len(voice_order)]
        counters["tts"] += 1
        if (engine, voice) == avoid:
            engine, voice = voice_order[counters["tts"] % len(voice_order)]
            counters["tts"] += 1
        params = speech.utterance_params(crng, engine, voice)
        return {"id": cid, "type": "tts", "engine": engine, "voice": voice,
                "text": speech.sentence_text(crng, src.words, seconds, params), "params": params}

    clips = []
    for i, kind in enumerate(kinds):
        crng = np.random.default_rng([seed, i, 7])
        samples = int(crng.uniform(MIN_SECONDS, MAX_SECONDS) * SR)
        seconds = samples / SR
        comps, mix = [], None
        c = lambda k: f"{i:05d}.{k}"  # noqa: E731
        if kind in ("music", "drums"):
            comps.append(midi_comp(c(0), kind, seconds))
        elif kind == "speech":
            comps.append(tts_comp(crng, c(0), seconds))
            if crng.uniform() < 0.25:  # A faint noise floor.
                comps.append({"id": c(1), "type": "noise", "gain_db": -crng.uniform(20, 45)})
        elif kind == "noise":
            comps.append({"id": c(0), "type": "noise"})
            if crng.uniform() < 0.4:  # Plus GM sound effects (sea, birds, applause, ...).
                sfx = midi_comp(c(1), "sfx", seconds)
                sfx["gain_db"] = crng.uniform(-12, 6)
                comps.append(sfx)
        else:
            mix = MIXTURES[crng.choice(len(MIXTURES), p=MIXTURE_WEIGHTS)]
            first, second = mix.split("+")
            if first in ("music", "drums"):
                comps.append(midi_comp(c(0), first, seconds))
            else:
                comps.append(tts_comp(crng, c(0), seconds))
            if second == "speech":
                avoid = (comps[0].get("engine"), comps[0].get("voice"))
                comps.append(tts_comp(crng, c(1), seconds, avoid))
                lo, hi = (-12, 0) if first == "speech" else (-5, 15)
            else:
                comps.append({"id": c(1), "type": "noise"})
                lo, hi = (-5, 20) if first == "speech" else (0, 20)
                lo, hi = -hi, -lo  # The noise's level relative to the first source.
            comps[1]["gain_db"] = crng.uniform(lo, hi)
        for comp in comps:
            comp.setdefault("gain_db", 0.0)
            comp["gain_db"] = round(float(comp["gain_db"]), 2)
            comp["seed"] = [seed, i, int(comp["id"][-1]) + 11]
        clips.append({"index": i, "label": kind, "mixture": mix, "samples": samples,
                      "gain_db": round(float(-crng.uniform(1, 18)), 2), "components": comps})
    return clips


def _active_rms(x: np.ndarray) -> float:
    """RMS of the louder half of 50-ms frames (ignores pauses)."""
    frames = x[: x.size // 800 * 800].reshape(-1, 800)
    energy = np.sort((frames.astype(np.float64) ** 2).mean(axis=1))
    return float(np.sqrt(energy[energy.size // 2 :].mean())) if energy.size else 0.0


def _fit(x: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Crops (from near the start) or zero-pads (at a random offset) to n samples."""
    if x.size >= n:
        start = int(rng.integers(0, min(x.size - n, SR // 2) + 1))
        return x[start : start + n]
    out = np.zeros(n, np.float32)
    start = int(rng.integers(0, n - x.size + 1))
    out[start : start + x.size] = x
    return out


class _Writer:
    """Collects rendered parts; mixes and writes a clip once all its parts are in."""

    def __init__(self, clips, directory, progress):
        self.clips = {c["index"]: c for c in clips}
        self.need = {c["index"]: {p["id"] for p in c["components"] if p["type"] != "noise"}
                     for c in clips}
        self.parts = {i: {} for i in self.clips}
        self.lock = threading.Lock()
        self.directory, self.progress = directory, progress
        self.written, self.skipped = {}, {}

    def deliver(self, cid: str, wave):
        i = int(cid.split(".")[0])
        with self.lock:
            self.parts[i][cid] = wave
            ready = set(self.parts[i]) >= self.need[i]
        if ready:
            self.finish(i)

    def finish(self, i: int):
        clip = self.clips[i]
        n = clip["samples"]
        rng = np.random.default_rng(clip["components"][0]["seed"] + [5])
        x = np.zeros(n, np.float64)
        reason = None
        for comp in clip["components"]:
            if comp["type"] == "noise":
                part, comp["noise"] = noise.noise_bed(np.random.default_rng(comp["seed"]), n / SR)
            else:
                part = self.parts[i].pop(comp["id"])
            if part is None:
                reason = f"{comp['type']} {comp['id']}: rendered nothing"
                break
            part = _fit(np.asarray(part, np.float32), n, rng)
            level = _active_rms(part)
            if not np.all(np.isfinite(part)):
                reason = f"{comp['type']} {comp['id']}: NaN/inf samples"
                break
            if np.abs(part).max() < SILENT_PEAK or level <= 0:
                reason = f"{comp['type']} {comp['id']}: silent"
                break
            x += part / level * 10 ** (comp["gain_db"] / 20)
        self.parts.pop(i, None)
        if reason is None:
            peak = float(np.abs(x).max())
            if not np.isfinite(peak) or peak < SILENT_PEAK:
                reason = "mix: silent or NaN"
        if reason is not None:
            with self.lock:
                self.skipped[i] = reason
            log.warning("demo corpus: skipped clip %d (%s)", i, reason)
        else:
            x = x / peak * 10 ** (clip["gain_db"] / 20)
            rel = f"audio/{i:05d}_{clip['label']}.flac"
            pcm = np.clip(np.round(x * 32767), -32768, 32767).astype(np.int16)
            sf.write(os.path.join(self.directory, rel), pcm, SR, subtype="PCM_16", format="FLAC")
            with self.lock:
                self.written[i] = rel
        if self.progress:
            self.progress(1)


def _jobs(clips, src: sources_lib.Sources):
    """(estimated seconds, source name, callable(writer, tmpdir, stats)) per job."""
    fonts = {sf.name: sf for sf in src.soundfonts}
    by_type = {}
    for clip in clips:
        for comp in clip["components"]:
            key = comp["font"] if comp["type"] == "midi" else comp.get("engine")
            if key is not None:
                by_type.setdefault(key, []).append(comp)
    jobs = []
    for name, comps in by_type.items():
        if name in fonts:
            size = MIDI_BATCH[name]
            nb = max(1, -(-len(comps) // size))
            for b in range(nb):
                chunk = comps[b * len(comps) // nb : (b + 1) * len(comps) // nb]
                cost = (6.0 if name == "musescore" else 0.5) + sum(c["seconds"] for c in chunk) / 80
                jobs.append((cost, f"fluidsynth:{name}", _midi_job(fonts[name], chunk, src)))
        else:
            size = FLITE_BATCH if name == "flite" else FESTIVAL_BATCH
            for b in range(0, len(comps), size):
                chunk = comps[b : b + size]
                cost = 0.2 * len(chunk)
                fn = _flite_job if name == "flite" else _festival_job
                jobs.append((cost, name, fn(chunk, src)))
    noise_only = [c["index"] for c in clips if all(p["type"] == "noise" for p in c["components"])]
    if noise_only:
        jobs.append((0.02 * len(noise_only), "noise", _noise_job(noise_only)))
    jobs.sort(key=lambda j: -j[0])
    return jobs


def _midi_job(font, comps, src):
    def run(writer, tmp):
        segments = []
        for comp in comps:
            ev, desc = music.arrangement(np.random.default_rng(comp["seed"]), comp["seconds"],
                                         font.melodic, font.kits, comp["kind"])
            comp["midi"] = json.loads(json.dumps(desc, default=str))
            segments.append((ev, comp["seconds"]))
        for j, wave in music.render_batch(src.programs["fluidsynth"], font.path, segments, tmp):
            writer.deliver(comps[j]["id"], wave)
        return len(comps), sum(c["seconds"] for c in comps)
    return run


def _flite_job(comps, src):
    def run(writer, tmp):
        total = 0.0
        for comp in comps:
            wave = speech.flite(src.programs["flite"], comp["voice"], comp["text"],
                                comp["params"], os.path.join(tmp, "flite.wav"))
            total += 0 if wave is None else wave.size / SR
            writer.deliver(comp["id"], wave)
        return len(comps), total
    return run


def _festival_job(comps, src):
    def run(writer, tmp):
        waves = speech.festival_batch(
            src.programs["festival"], [(c["voice"], c["text"], c["params"]) for c in comps], tmp)
        for comp, wave in zip(comps, waves):
            writer.deliver(comp["id"], wave)
        return len(comps), sum(0 if w is None else w.size / SR for w in waves)
    return run


def _noise_job(indices):
    def run(writer, tmp):
        del tmp
        for i in indices:
            writer.finish(i)
        return len(indices), sum(writer.clips[i]["samples"] / SR for i in indices)
    return run


def _cpu_seconds(thread: bool = False) -> float:
    """CPU time of this process (or only this thread) plus its finished
    children (with two workers, a job's count also has the other's children)."""
    own = resource.RUSAGE_THREAD if thread else resource.RUSAGE_SELF
    return sum(r.ru_utime + r.ru_stime
               for r in (resource.getrusage(own), resource.getrusage(resource.RUSAGE_CHILDREN)))


def _progress_bar(total: int):
    if not sys.stderr.isatty():
        return None
    return tqdm(total=total, unit="clip", desc="demo corpus", smoothing=0.1)


def write_corpus(directory: str, num_clips: int, seed: int,
                 src: sources_lib.Sources | None = None, workers: int = MAX_WORKERS) -> str:
    """Renders the corpus into `directory` (audio/, meta.csv, clips.json,
    corpus.json); returns the meta.csv path. Raises `DemoSourceError` first
    when a source is missing."""
    src = src or sources_lib.find_sources()
    start, cpu0 = time.perf_counter(), _cpu_seconds()
    clips = plan(num_clips, seed, src)
    os.makedirs(os.path.join(directory, "audio"), exist_ok=True)
    bar = _progress_bar(num_clips)
    writer = _Writer(clips, directory, bar.update if bar else None)
    stats, stats_lock = {}, threading.Lock()

    def run(job):
        _, name, fn = job
        with tempfile.TemporaryDirectory(prefix="render-", dir=directory) as tmp:
            t, cpu = time.perf_counter(), _cpu_seconds(thread=True)
            count, audio_s = fn(writer, tmp)
            dt, cpu = time.perf_counter() - t, _cpu_seconds(thread=True) - cpu
        with stats_lock:
            s = stats.setdefault(name, {"parts": 0, "audio_seconds": 0.0, "seconds": 0.0,
                                        "cpu_seconds": 0.0})
            s["parts"] += count
            s["audio_seconds"] += audio_s
            s["seconds"] += dt
            s["cpu_seconds"] += cpu

    jobs = _jobs(clips, src)
    workers = max(1, min(workers, MAX_WORKERS, os.cpu_count() or 1))
    try:
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            for fut in concurrent.futures.as_completed([pool.submit(run, j) for j in jobs]):
                fut.result()
    finally:
        if bar:
            bar.close()
    if len(writer.skipped) > max(2, num_clips // 2):
        raise RuntimeError(
            f"demo corpus: {len(writer.skipped)} of {num_clips} clips came out empty "
            f"(e.g. {next(iter(writer.skipped.values()))}); the TTS/synth install looks broken"
        )
    elapsed = time.perf_counter() - start
    rows = [{"file": writer.written[i], "label": clips[i]["label"]} for i in sorted(writer.written)]
    path = os.path.join(directory, "meta.csv")
    with open(path + ".tmp", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, ["file", "label"])
        w.writeheader()
        w.writerows(rows)
    for clip in clips:
        clip["file"] = writer.written.get(clip["index"])
        clip["skipped"] = writer.skipped.get(clip["index"])
    with open(os.path.join(directory, "clips.json"), "w", encoding="utf-8") as f:
        json.dump(clips, f, indent=0)
    for s in stats.values():
        for k in ("audio_seconds", "seconds", "cpu_seconds"):
            s[k] = round(s[k], 2)
        s["parts_per_second"] = round(s["parts"] / max(s["seconds"], 1e-9), 2)
    info = {
        "version": VERSION, "num_clips": num_clips, "seed": seed, "written": len(rows),
        "skipped": len(writer.skipped),
        "labels": {k: sum(r["label"] == k for r in rows) for k in KINDS},
        "seconds": round(elapsed, 1), "clips_per_second": round(len(rows) / elapsed, 2),
        "cpu_seconds": round(_cpu_seconds() - cpu0, 1),  # this process + its children
        "workers": workers, "sources_fingerprint": src.fingerprint(), "per_source": stats,
        "soundfonts": {s.name: s.path for s in src.soundfonts},
        "voices": {"flite": list(src.flite_voices), "festival": list(src.festival_voices)},
    }
    with open(os.path.join(directory, "corpus.json"), "w", encoding="utf-8") as f:
        json.dump(info, f, indent=1)
    os.replace(path + ".tmp", path)
    log.info("demo corpus: %d clips (%d skipped) in %.1f s -> %s", len(rows),
             len(writer.skipped), elapsed, directory)
    return path


# --- The per-user cache. ---------------------------------------------------

DISABLED = ("", "0", "off", "none", "false", "no")


def cache_root() -> str | None:
    """<MATPAC_JAX_CACHE or ~/.cache/matpac_jax>/demo_corpus; None if disabled."""
    value = os.environ.get("MATPAC_JAX_CACHE")
    if value is not None and value.strip().lower() in DISABLED:
        return None
    if value is None:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        value = os.path.join(base, "matpac_jax")
    return os.path.join(value, "demo_corpus")


def cache_key(num_clips: int, seed: int, src: sources_lib.Sources) -> str:
    return f"v{VERSION}-n{num_clips}-s{seed}-{src.fingerprint()}"


def _complete(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "meta.csv")) and os.path.isfile(
        os.path.join(path, "corpus.json"))


@contextlib.contextmanager
def _locked(path: str):
    with open(path, "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def cached_corpus(num_clips: int, seed: int, src: sources_lib.Sources | None = None) -> str | None:
    """The folder of the cached corpus (rendered now if absent), or None when
    the cache is disabled or cannot be written."""
    root = cache_root()
    if root is None:
        return None
    src = src or sources_lib.find_sources()
    final = os.path.join(root, cache_key(num_clips, seed, src))
    if _complete(final):
        return final
    try:
        os.makedirs(root, exist_ok=True)
    except OSError as err:
        log.warning("demo corpus: cache %s not writable (%s); not caching", root, err)
        return None
    with _locked(final + ".lock"):
        if _complete(final):  # Made by another process while we waited.
            return final
        for stale in (final, final + ".tmp"):
            shutil.rmtree(stale, ignore_errors=True)
        write_corpus(final + ".tmp", num_clips, seed, src)
        os.replace(final + ".tmp", final)
    return final
