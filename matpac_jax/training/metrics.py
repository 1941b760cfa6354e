"""TensorBoard scalars without TensorFlow, console lines, and MFU.

TensorBoard reads `events.out.tfevents.*` files: TFRecord-framed `Event`
protos. An `Event` with scalars needs five protobuf fields, so we encode them
by hand rather than depend on TensorFlow or tensorboardX.
"""
from __future__ import annotations

import os
import socket
import struct
import time
from typing import Mapping

import jax

from matpac_jax.data.tfrecord import masked_crc32c

# Dense bf16 peak FLOP/s per device, for MFU. Override with config.peak_flops.
PEAK_FLOPS = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v5": 459e12,
    "TPU v6 lite": 918e12,
    "TPU v6e": 918e12,
    "H100": 989e12,  # SXM
    "H100 PCIe": 756e12,
    "H200": 989e12,
    "A100": 312e12,
}


def peak_flops(device: jax.Device, override: float | None = None) -> float | None:
    if override:
        return float(override)
    kind = getattr(device, "device_kind", "")
    for name, flops in sorted(PEAK_FLOPS.items(), key=lambda kv: -len(kv[0])):
        if name.lower() in kind.lower():
            return flops
    return None


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(num: int, wire: int, payload: bytes) -> bytes:
    return _varint(num << 3 | wire) + payload


def _len_field(num: int, data: bytes) -> bytes:
    return _field(num, 2, _varint(len(data)) + data)


def encode_scalar_event(step: int, scalars: Mapping[str, float], wall_time: float) -> bytes:
    """Event{wall_time=1, step=2, summary=5{value=1{tag=1, simple_value=2}}}."""
    values = b"".join(
        _len_field(1, _len_field(1, tag.encode()) + _field(2, 5, struct.pack("<f", float(v))))
        for tag, v in scalars.items()
    )
    return (
        _field(1, 1, struct.pack("<d", wall_time))
        + _field(2, 0, _varint(int(step)))
        + _len_field(5, values)
    )


class EventWriter:
    """Appends scalar events to a TensorBoard event file (process 0 only)."""

    def __init__(self, logdir: str):
        self._file = None
        if jax.process_index() != 0:
            return
        os.makedirs(logdir, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}"
        self._file = open(os.path.join(logdir, name), "ab")
        version = _field(1, 1, struct.pack("<d", time.time())) + _len_field(3, b"brain.Event:2")
        self._write(version)

    def _write(self, data: bytes) -> None:
        header = struct.pack("<Q", len(data))
        self._file.write(header + struct.pack("<I", masked_crc32c(header)))
        self._file.write(data + struct.pack("<I", masked_crc32c(data)))

    def scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        if self._file is None:
            return
        self._write(encode_scalar_event(step, scalars, time.time()))
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _read_varint(buf: bytes, i: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        b = buf[i]
        n |= (b & 0x7F) << shift
        i, shift = i + 1, shift + 7
        if not b & 0x80:
            return n, i


def _fields(buf: bytes):
    """(field number, value) pairs of one protobuf message (wire types 0/1/2/5)."""
    i = 0
    while i < len(buf):
        key, i = _read_varint(buf, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _read_varint(buf, i)
        elif wire == 1:
            value, i = buf[i:i + 8], i + 8
        elif wire == 2:
            n, i = _read_varint(buf, i)
            value, i = buf[i:i + n], i + n
        elif wire == 5:
            value, i = buf[i:i + 4], i + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield num, value


def read_scalars(logdir: str) -> dict[str, list[tuple[int, float]]]:
    """All scalars of the event files in `logdir`: {tag: [(step, value), ...]}."""
    from matpac_jax.data.tfrecord import read_records

    out: dict[str, list[tuple[int, float]]] = {}
    for name in sorted(os.listdir(logdir)):
        if not name.startswith("events.out.tfevents."):
            continue
        for record in read_records(os.path.join(logdir, name)):
            fields = list(_fields(record))
            step = next((v for n, v in fields if n == 2), 0)
            for n, summary in fields:
                if n != 5:
                    continue
                for _, value in _fields(summary):
                    tag, simple = None, None
                    for vn, vv in _fields(value):
                        if vn == 1:
                            tag = vv.decode()
                        elif vn == 2:
                            simple = struct.unpack("<f", vv)[0]
                    if tag is not None and simple is not None:
                        out.setdefault(tag, []).append((step, simple))
    return out


def format_line(step: int, total: int, scalars: Mapping[str, float]) -> str:
    parts = [f"step {step}/{total}"]
    for k, v in scalars.items():
        parts.append(f"{k}={v:.4g}")
    return " ".join(parts)
