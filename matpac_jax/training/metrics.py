"""TensorBoard scalars without TensorFlow (tensorboardX), console lines, and MFU.

Event files go into WORKDIR/tensorboard wherever the workdir is: on gs://
an event file is kept in memory and uploaded whole (object stores have no
append) at most every `UPLOAD_EVERY_S` seconds and when the run ends, so
`tensorboard --logdir gs://BUCKET/run/tensorboard` follows a run live.
"""
from __future__ import annotations

import io
import os
import time
from typing import Mapping

import jax
from tensorboardX import SummaryWriter, record_writer
from tensorboardX.proto import event_pb2

from matpac_jax import storage
from matpac_jax.data.tfrecord import read_records

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


UPLOAD_EVERY_S = 30.0


class _ObjectEventFile:
    """tensorboardX's record file on gs://: appended in memory, uploaded whole."""

    def __init__(self, path: str):
        self.path, self._buffer, self._uploaded, self._last = path, io.BytesIO(), 0, 0.0

    def write(self, data: bytes) -> None:
        self._buffer.write(data)

    def flush(self, force: bool = False) -> None:
        size = self._buffer.tell()
        if size != self._uploaded and (force or time.monotonic() - self._last >= UPLOAD_EVERY_S):
            storage.write_bytes(self.path, self._buffer.getvalue())
            self._uploaded, self._last = size, time.monotonic()

    def close(self) -> None:
        self.flush(force=True)


class _ObjectEventFiles:
    """tensorboardX's writer factory for gs:// log folders (through storage)."""

    def open(self, path: str) -> _ObjectEventFile:
        return _ObjectEventFile(storage.check(path, "TensorBoard folder"))

    def directory_check(self, path: str) -> None:
        storage.check(path, "TensorBoard folder")  # folders are name prefixes there


class EventWriter:
    """TensorBoard scalars (tensorboardX's writer), process 0 only, flushed per
    call (on gs://: uploaded at most every UPLOAD_EVERY_S, and on close)."""

    def __init__(self, logdir: str):
        self._writer = None
        if jax.process_index() != 0:
            return
        for scheme in storage.SCHEMES:  # ours, not tensorboardX's google-cloud-storage one
            record_writer.register_writer_factory(scheme, _ObjectEventFiles())
        self._writer = SummaryWriter(storage.check(logdir, "TensorBoard folder"),
                                     flush_secs=3600)

    def scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        if self._writer is None:
            return
        for tag, value in scalars.items():
            self._writer.add_scalar(tag, float(value), int(step))
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def read_scalars(logdir: str) -> dict[str, list[tuple[int, float]]]:
    """All scalars of the event files in `logdir` (local or gs://): {tag: [(step, value), ...]}."""
    out: dict[str, list[tuple[int, float]]] = {}
    for path in storage.listdir(logdir):
        if not os.path.basename(path).startswith("events.out.tfevents."):
            continue
        for record in read_records(path):
            event = event_pb2.Event.FromString(record)
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    out.setdefault(value.tag, []).append((event.step, value.simple_value))
    return out


def format_line(step: int, total: int, scalars: Mapping[str, float]) -> str:
    parts = [f"step {step}/{total}"]
    for k, v in scalars.items():
        parts.append(f"{k}={v:.4g}")
    return " ".join(parts)
