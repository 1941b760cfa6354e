"""A tiny Standard MIDI File writer (format 0), enough to drive fluidsynth.

Events are given in seconds; the file uses a fixed tempo (0.5 s per quarter
note, 960 ticks per second), so the music's own tempo is expressed by where
the notes fall. Channels are 0-based (channel 9 is the General MIDI drum kit).

  events = [midi.program(0.0, 0, 40), midi.note(0.0, 0.5, 0, 60, 100)]
  midi.write_smf("phrase.mid", events)
"""

from __future__ import annotations

import struct
from typing import Iterable, NamedTuple

TICKS_PER_BEAT = 480
TEMPO_US = 500_000  # microseconds per quarter note
TICKS_PER_SECOND = TICKS_PER_BEAT * 1_000_000 // TEMPO_US  # 960
DRUM_CHANNEL = 9


class Event(NamedTuple):
    time: float  # seconds
    order: int  # tie-break at equal times: controls 0, note-offs 1, note-ons 2
    data: bytes


def program(time: float, channel: int, prog: int) -> Event:
    return Event(time, 0, bytes([0xC0 | channel, prog & 0x7F]))


def control(time: float, channel: int, number: int, value: int) -> Event:
    return Event(time, 0, bytes([0xB0 | channel, number & 0x7F, int(value) & 0x7F]))


def pitch_bend(time: float, channel: int, value: int) -> Event:
    """`value` in [-8192, 8191]."""
    v = max(0, min(16383, int(value) + 8192))
    return Event(time, 0, bytes([0xE0 | channel, v & 0x7F, v >> 7]))


def note(start: float, duration: float, channel: int, key: int, velocity: int) -> list[Event]:
    """Note-on at `start` and note-off `duration` seconds later."""
    key, velocity = max(0, min(127, int(key))), max(1, min(127, int(velocity)))
    return [
        Event(start, 2, bytes([0x90 | channel, key, velocity])),
        Event(start + max(duration, 0.005), 1, bytes([0x80 | channel, key, 0])),
    ]


def silence(time: float) -> list[Event]:
    """All sound off, reset controllers and default programs on all 16 channels."""
    out = []
    for ch in range(16):
        out += [control(time, ch, 120, 0), control(time, ch, 121, 0), pitch_bend(time, ch, 0)]
    return out


def _vlq(n: int) -> bytes:
    out = [n & 0x7F]
    n >>= 7
    while n:
        out.append(0x80 | (n & 0x7F))
        n >>= 7
    return bytes(reversed(out))


def encode_smf(events: Iterable[Event]) -> bytes:
    """Format-0 SMF bytes of `events` (any order; sorted by time, then `order`)."""
    track = bytearray()
    track += b"\x00\xff\x51\x03" + TEMPO_US.to_bytes(3, "big")
    last = 0
    for ev in sorted(events, key=lambda e: (round(e.time * TICKS_PER_SECOND), e.order)):
        tick = max(0, round(ev.time * TICKS_PER_SECOND))
        track += _vlq(tick - last) + ev.data
        last = tick
    track += b"\x00\xff\x2f\x00"  # end of track
    header = b"MThd" + struct.pack(">IHHH", 6, 0, 1, TICKS_PER_BEAT)
    return header + b"MTrk" + struct.pack(">I", len(track)) + bytes(track)


def write_smf(path: str, events: Iterable[Event]) -> None:
    with open(path, "wb") as f:
        f.write(encode_smf(events))
