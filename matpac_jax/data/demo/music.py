"""Random MIDI arrangements rendered by fluidsynth from sampled GM soundfonts.

`arrangement(rng, seconds, sf, kind)` writes the events of one segment:
phrases, chords, arpeggios, bass lines and pads of random General MIDI
programs in a random key, scale, metre and tempo, optionally over a drum-kit
pattern on channel 10 (`kind="music"`), a drum kit alone, maybe with a tuned
percussion part (`"drums"`), or a bed of the GM sound-effect programs
(`"sfx"`). `render_batch` plays many segments through ONE fluidsynth process
(a soundfont is loaded once per batch) and cuts them apart.
"""

from __future__ import annotations

import math
import os
import subprocess

import numpy as np

from matpac_jax.data import midi
from matpac_jax.data.frontends import SR

GAP = 1.0  # seconds of silence between segments of a batch (reverb tails die out)
DYNAMIC_LOADING_MAX = 12
SCALES = (
    (0, 2, 4, 5, 7, 9, 11),  # major
    (0, 2, 3, 5, 7, 8, 10),  # natural minor
    (0, 2, 3, 5, 7, 8, 11),  # harmonic minor
    (0, 2, 3, 5, 7, 9, 10),  # dorian
    (0, 2, 4, 5, 7, 9, 10),  # mixolydian
    (0, 1, 3, 5, 7, 8, 10),  # phrygian
    (0, 2, 4, 7, 9),  # major pentatonic
    (0, 3, 5, 7, 10),  # minor pentatonic
    (0, 3, 5, 6, 7, 10),  # blues
    (0, 2, 4, 6, 8, 10),  # whole tone
)
ROLES = ("melody", "chords", "arpeggio", "bass", "pad", "counter")
ROLE_WEIGHTS = (0.26, 0.2, 0.14, 0.18, 0.12, 0.1)
ROLE_RANGE = {  # lowest and highest key of a role
    "melody": (55, 91), "counter": (52, 84), "chords": (45, 79), "pad": (43, 79),
    "arpeggio": (48, 91), "bass": (28, 55),
}
MELODIC_CHANNELS = tuple(c for c in range(16) if c != midi.DRUM_CHANNEL)
TUNED_PERCUSSION = (8, 9, 10, 11, 12, 13, 14, 15, 47, 108, 112, 113, 114, 115, 116, 117, 118)
SFX_PROGRAMS = (120, 121, 122, 123, 124, 125, 126, 127)
KICK, SNARES, CLOSED_HATS = (35, 36), (38, 40, 37, 39), (42, 44)
OPEN_HATS, CYMBALS, TOMS = (46,), (49, 51, 52, 53, 55, 57, 59), (41, 43, 45, 47, 48, 50)
HAND_PERC = (54, 56, 58, 60, 61, 62, 63, 64, 65, 66, 67, 68, 69, 70, 73, 74, 75, 76, 77, 80, 81)


def _scale_keys(root: int, scale) -> np.ndarray:
    """All MIDI keys 0..127 of the scale."""
    return np.array([k for k in range(128) if (k - root) % 12 in scale])


def _nearest(keys: np.ndarray, k: float) -> int:
    return int(keys[np.argmin(np.abs(keys - k))])


class _Song:
    """Shared musical frame of one segment: tempo, metre, key, chord progression."""

    def __init__(self, rng: np.random.Generator, seconds: float):
        self.rng, self.seconds = rng, seconds
        self.beat = 60.0 / rng.uniform(56, 184)
        self.meter = int(rng.choice([2, 3, 4, 4, 4, 5, 6, 7]))
        self.bar = self.beat * self.meter
        self.swing = rng.uniform(0.05, 0.3) if rng.uniform() < 0.25 else 0.0
        self.root = int(rng.integers(12))
        self.scale = SCALES[rng.integers(len(SCALES))]
        self.keys = _scale_keys(self.root, self.scale)
        bars_per_chord = int(rng.choice([1, 1, 2, 2, 4])) if self.meter < 6 else 1
        span = self.bar * bars_per_chord * rng.choice([1.0, 1.0, 0.5])
        n = len(self.scale)
        degree, self.chords = 0, []  # (start, end, chord keys as pitch classes)
        t = 0.0
        while t < seconds:
            if rng.uniform() < 0.8:
                degree = int(rng.choice([0, 3, 4, 5, 1, 2, 6][:n] if n >= 7 else range(n)))
            size = 4 if rng.uniform() < 0.3 else 3
            pcs = [self.scale[(degree + 2 * j) % n] + self.root for j in range(size)]
            self.chords.append((t, t + span, [p % 12 for p in pcs]))
            t += span

    def chord_at(self, t: float):
        for start, end, pcs in self.chords:
            if start <= t < end:
                return start, end, pcs
        return self.chords[-1]

    def grid(self, step_beats: float):
        """Onset times of a grid of `step_beats`, with swing on the off-steps."""
        step = self.beat * step_beats
        times, i = [], 0
        while i * step < self.seconds:
            t = i * step + (self.swing * step if i % 2 else 0.0)
            times.append(t)
            i += 1
        return times


def _chord_keys(pcs, low: int, high: int, center: float) -> list[int]:
    keys = []
    for pc in pcs:
        k = pc + 12 * round((center - pc) / 12)
        while k < low:
            k += 12
        while k > high:
            k -= 12
        keys.append(k)
    return sorted(set(keys))


def _part(song: _Song, role: str, channel: int, program: int, rng) -> list:
    """Events of one instrument part."""
    low, high = ROLE_RANGE[role]
    shift = int(rng.integers(-5, 6))
    low, high = max(21, low + shift), min(108, high + shift)
    center = rng.uniform(low + 6, high - 6)
    base_vel = rng.uniform(45, 118)
    legato = rng.uniform(0.35, 1.0) if rng.uniform() < 0.8 else rng.uniform(0.1, 0.35)
    jitter = rng.uniform(0.0, 0.015)
    ev = [
        midi.program(0.0, channel, program),
        midi.control(0.0, channel, 7, int(rng.uniform(70, 127))),
        midi.control(0.0, channel, 11, 127),
        midi.control(0.0, channel, 10, int(rng.uniform(20, 108))),
        midi.control(0.0, channel, 91, int(rng.uniform(0, 100))),
        midi.control(0.0, channel, 93, int(rng.uniform(0, 60)) if rng.uniform() < 0.4 else 0),
        midi.control(0.0, channel, 1, int(rng.uniform(0, 80)) if rng.uniform() < 0.2 else 0),
    ]
    if rng.uniform() < 0.25:  # A swell or fade of the expression controller.
        a, b = rng.uniform(30, 127, 2)
        for j in range(33):
            ev.append(midi.control(song.seconds * j / 32, channel, 11, a + (b - a) * j / 32))

    def add(t, dur, key):
        if t >= song.seconds - 0.05 or not low - 12 <= key <= high + 12:
            return
        t = max(0.0, t + rng.normal(0, jitter))
        accent = 8 if abs((t / song.beat) % song.meter) < 0.05 else 0
        ev.extend(midi.note(t, dur, channel, key, base_vel + accent + rng.normal(0, 7)))

    keys = song.keys[(song.keys >= low) & (song.keys <= high)]
    if keys.size == 0:
        keys = np.arange(low, high + 1)
    if role in ("melody", "counter"):
        values = (0.25, 0.5, 0.5, 0.75, 1.0, 1.0, 1.5, 2.0) if role == "melody" else (1, 2, 2, 3, 4)
        t, key = 0.0 if role == "melody" else song.beat * rng.integers(0, 3), _nearest(keys, center)
        rest_p = rng.uniform(0.03, 0.25)
        while t < song.seconds:
            length = song.beat * float(rng.choice(values))
            if rng.uniform() < rest_p:
                t += length
                continue
            _, _, pcs = song.chord_at(t)
            step = int(rng.choice([-2, -1, -1, 0, 1, 1, 2, -3, 3, 4, -4]))
            idx = int(np.clip(np.searchsorted(keys, key) + step, 0, keys.size - 1))
            key = int(keys[idx])
            if rng.uniform() < 0.4:  # Lean toward chord tones.
                cands = [k for k in keys if k % 12 in pcs and abs(k - key) <= 4]
                key = int(rng.choice(cands)) if cands else key
            add(t, length * legato, key)
            t += length
    elif role in ("chords", "pad"):
        hits = rng.choice([1, 2, song.meter]) if role == "chords" else 1
        strum = rng.uniform(0.0, 0.04) if rng.uniform() < 0.5 else 0.0
        for start, end, pcs in song.chords:
            span = (end - start) / hits
            for h in range(int(hits)):
                t = start + h * span
                for j, k in enumerate(_chord_keys(pcs, low, high, center)):
                    add(t + j * strum, span * (legato if role == "chords" else 1.0), k)
    elif role == "arpeggio":
        step = float(rng.choice([0.25, 0.5, 1 / 3, 0.5]))
        pattern = rng.choice(["up", "down", "updown", "random"])
        octaves = int(rng.integers(1, 3))
        for i, t in enumerate(song.grid(step)):
            _, _, pcs = song.chord_at(t)
            ks = _chord_keys(pcs, low, high, center)
            ks = sorted(set(ks + [k + 12 for k in ks if k + 12 <= high][: 3 * (octaves - 1)]))
            if pattern == "up":
                k = ks[i % len(ks)]
            elif pattern == "down":
                k = ks[::-1][i % len(ks)]
            elif pattern == "updown":
                cycle = ks + ks[-2:0:-1]
                k = cycle[i % len(cycle)]
            else:
                k = int(rng.choice(ks))
            add(t, song.beat * step * legato * 1.5, k)
    elif role == "bass":
        step = float(rng.choice([0.5, 1.0, 1.0, 2.0]))
        for t in song.grid(step):
            _, _, pcs = song.chord_at(t)
            if rng.uniform() < 0.12:
                continue
            root = _chord_keys(pcs[:1], low, high, low + 10)[0]
            choice = rng.uniform()
            if choice < 0.6:
                k = root
            elif choice < 0.8:
                k = _chord_keys(pcs[2:3] or pcs[:1], low, high, root + 5)[0]
            elif choice < 0.9:
                k = root + 12 if root + 12 <= high else root
            else:
                k = _nearest(keys, root + rng.integers(-3, 4))
            add(t, song.beat * step * legato, k)
    if role in ("melody", "counter") and rng.uniform() < 0.15:  # Pitch-bend gestures.
        for t in rng.uniform(0, song.seconds, int(rng.integers(1, 6))):
            depth = rng.uniform(-4096, 4096)
            for j in range(9):
                ev.append(midi.pitch_bend(t + j * 0.03, channel, depth * math.sin(math.pi * j / 8)))
    return ev


def _drum_part(song: _Song, kit: int, rng) -> list:
    ch = midi.DRUM_CHANNEL
    ev = [midi.program(0.0, ch, kit), midi.control(0.0, ch, 7, int(rng.uniform(80, 127))),
          midi.control(0.0, ch, 91, int(rng.uniform(0, 70)))]
    style = rng.choice(["backbeat", "random", "hand", "sparse", "backbeat", "random"])
    steps_per_beat = int(rng.choice([4, 4, 2, 3])) if style != "sparse" else 2
    n = song.meter * steps_per_beat
    base = rng.uniform(60, 120)
    jitter = rng.uniform(0.0, 0.01)
    voices = {}  # key -> 0/1 pattern over one bar
    if style == "backbeat":
        kick = np.zeros(n)
        kick[0] = 1
        kick[rng.integers(0, n, int(rng.integers(0, 3)))] = 1
        snare = np.zeros(n)
        snare[[b * steps_per_beat for b in range(1, song.meter, 2)]] = 1
        hat = (np.arange(n) % int(rng.choice([1, 2]) if steps_per_beat > 2 else 1) == 0) * 1.0
        voices = {int(rng.choice(KICK)): kick, int(rng.choice(SNARES[:2])): snare,
                  int(rng.choice(CLOSED_HATS + (51,))): hat}
    elif style == "hand":
        for key in rng.choice(HAND_PERC, int(rng.integers(2, 5)), replace=False):
            voices[int(key)] = (rng.uniform(size=n) < rng.uniform(0.15, 0.6)) * 1.0
    else:
        dens = 0.12 if style == "sparse" else 0.35
        pool = KICK + SNARES + CLOSED_HATS + OPEN_HATS + CYMBALS + TOMS + HAND_PERC
        for key in rng.choice(pool, int(rng.integers(2, 6)), replace=False):
            voices[int(key)] = (rng.uniform(size=n) < rng.uniform(0.05, dens * 2)) * 1.0
    fill_every = int(rng.choice([2, 4, 8, 1000]))
    step = song.beat / steps_per_beat
    bar_i, t = 0, 0.0
    while t < song.seconds:
        fill = (bar_i + 1) % fill_every == 0
        for i in range(n):
            ts = t + i * step + (song.swing * step if i % 2 else 0.0)
            for key, pattern in voices.items():
                if pattern[i] and not (fill and i >= n // 2 and key not in KICK):
                    vel = base * rng.uniform(0.7, 1.15) * (1.15 if i == 0 else 1.0)
                    ev.extend(midi.note(max(0.0, ts + rng.normal(0, jitter)), 0.1, ch, key, vel))
            if fill and i >= n // 2 and rng.uniform() < 0.7:
                ev.extend(midi.note(ts, 0.1, ch, int(rng.choice(TOMS + SNARES[:1])),
                                    base * rng.uniform(0.8, 1.2)))
        if bar_i == 0 or (fill_every < 1000 and bar_i % fill_every == 0 and rng.uniform() < 0.5):
            ev.extend(midi.note(t, 0.5, ch, int(rng.choice(CYMBALS[:1] + (57,))), base))
        bar_i += 1
        t += song.bar
    return ev


def _sfx_part(seconds: float, program: int, channel: int, rng) -> list:
    ev = [midi.program(0.0, channel, program), midi.control(0.0, channel, 7, 110),
          midi.control(0.0, channel, 91, int(rng.uniform(0, 60)))]
    t = rng.uniform(0, 1.0)
    while t < seconds:
        dur = rng.uniform(0.5, 4.0)
        ev.extend(midi.note(t, dur, channel, int(rng.integers(48, 84)), rng.uniform(60, 127)))
        t += dur * rng.uniform(0.3, 1.2)
    return ev


def arrangement(rng: np.random.Generator, seconds: float, melodic, kits, kind: str):
    """(events with times in [0, seconds), description) of one segment."""
    song = _Song(rng, seconds)
    ev, desc = [], {"tempo": round(60 / song.beat, 1), "meter": song.meter}
    if kind == "sfx":
        programs = [p for p in SFX_PROGRAMS if p in melodic] or list(melodic)
        chosen = rng.choice(programs, int(rng.integers(1, 3)), replace=False)
        for ch, prog in enumerate(chosen):
            ev += _sfx_part(seconds, int(prog), ch, rng)
        return ev, {"programs": [int(p) for p in chosen]}
    programs = [p for p in melodic if p < 120]
    with_drums = kind == "drums" or rng.uniform() < 0.45
    solo = False
    if kind == "drums":
        roles = ["perc"] if rng.uniform() < 0.25 else []
    else:
        n = int(rng.choice([1, 1, 2, 2, 3, 3, 4, 5]))
        roles = list(rng.choice(ROLES, n, p=ROLE_WEIGHTS))
        if n == 1 and rng.uniform() < 0.4:  # A solo instrument playing two hands.
            roles = [roles[0], "chords" if roles[0] != "chords" else "bass"]
            solo = True
    channels = list(rng.permutation(MELODIC_CHANNELS))
    desc["parts"] = []
    prog = None
    for i, role in enumerate(roles):
        if role == "perc":
            role = str(rng.choice(["melody", "arpeggio", "bass"]))
            prog = int(rng.choice([p for p in TUNED_PERCUSSION if p in melodic]))
        elif not (solo and i == 1):
            prog = int(rng.choice(programs))
        ev += _part(song, role, int(channels[i]), prog, rng)
        desc["parts"].append([role, prog])
    if with_drums:
        kit = int(rng.choice(kits))
        ev += _drum_part(song, kit, rng)
        desc["kit"] = kit
    desc["key"] = song.root
    return ev, desc


def render_batch(fluidsynth: str, soundfont: str, segments, workdir: str):
    """Renders `segments` [(events, seconds), ...] in one fluidsynth run and
    yields (index, mono float32 array of exactly `seconds * SR` samples) as the
    audio streams in (the whole batch is never held in memory)."""
    events, bounds, t = [], [], 0.0
    for seg_events, seconds in segments:
        a = int(round(t * SR))
        bounds.append((a, a + int(round(seconds * SR))))
        events.extend(e._replace(time=e.time + t) for e in seg_events if e.time < seconds)
        events.extend(midi.silence(t + seconds))
        t += seconds + GAP
    events.append(midi.control(t, 0, 7, 100))  # Renders to the end of the last gap.
    path = os.path.join(workdir, "batch.mid")
    midi.write_smf(path, events)
    cmd = [fluidsynth, "-n", "-i", "-q", "-F", "/dev/stdout", "-T", "raw", "-O", "float",
           "-r", str(SR), "-g", "0.6", "-o", "synth.cpu-cores=1",
           # Few segments: load only the presets they use (an sf3's samples are
           # decoded on load); many: load all once (dynamic loading would
           # decode a preset again each time it comes back).
           "-o", f"synth.dynamic-sample-loading={int(len(segments) <= DYNAMIC_LOADING_MAX)}",
           "-o", "synth.polyphony=256",
           soundfont, path]
    with open(os.path.join(workdir, "fluidsynth.log"), "w+b") as err, subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=err
    ) as proc:

        def failed(code):
            err.seek(0)
            tail = err.read()[-500:].decode("utf-8", "replace")
            return RuntimeError(f"{fluidsynth} failed with exit status {code}: {tail}")

        buf, offset, i, pending = np.zeros((0, 2), np.float32), 0, 0, b""  # buf[0] = `offset`
        while i < len(bounds):
            chunk = proc.stdout.read(1 << 20)
            if not chunk and proc.wait() != 0:
                raise failed(proc.returncode)
            pending += chunk
            usable = len(pending) // 8 * 8
            if usable:
                new = np.frombuffer(pending[:usable], np.float32).reshape(-1, 2)
                buf, pending = np.concatenate([buf, new]), pending[usable:]
            while i < len(bounds) and (offset + len(buf) >= bounds[i][1] or not chunk):
                a, b = bounds[i]
                seg = buf[max(0, a - offset) : max(0, b - offset)].mean(axis=1)
                yield i, np.pad(seg, (0, (b - a) - seg.size)).astype(np.float32)
                i += 1
            if i < len(bounds):  # Keep only what the next segments need.
                drop = max(0, min(bounds[i][0] - offset, len(buf)))
                buf, offset = buf[drop:], offset + drop
        proc.stdout.read()
        if proc.wait() != 0:
            raise failed(proc.returncode)
