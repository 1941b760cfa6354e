"""TensorBoard scalars without TensorFlow (tensorboardX), console lines, and MFU."""
from __future__ import annotations

import os
from typing import Mapping

import jax

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


class EventWriter:
    """TensorBoard scalars (tensorboardX's writer), process 0 only, flushed per call."""

    def __init__(self, logdir: str):
        self._writer = None
        if jax.process_index() != 0:
            return
        from tensorboardX import SummaryWriter

        self._writer = SummaryWriter(logdir, flush_secs=3600)

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
    """All scalars of the event files in `logdir`: {tag: [(step, value), ...]}."""
    from tensorboardX.proto import event_pb2

    from matpac_jax.data.tfrecord import read_records

    out: dict[str, list[tuple[int, float]]] = {}
    for name in sorted(os.listdir(logdir)):
        if not name.startswith("events.out.tfevents."):
            continue
        for record in read_records(os.path.join(logdir, name)):
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
