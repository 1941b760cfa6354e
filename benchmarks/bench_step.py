"""Training-step benchmark: compile time, step time, samples/s, FLOPs, MFU and
the compiled step's memory per device.

  python benchmarks/bench_step.py --config=configs/matpac_as2m.py --per_device_batch=4 \
      --config.model.dtype=float32

Uses random inputs of the config's shape (the data pipeline is benchmarked
separately by benchmarks/bench_data.py), the real jitted step with
donated state, and XLA's cost analysis of the compiled step for FLOPs.
"""
from __future__ import annotations

import json
import sys
import time

import jax
import numpy as np
from absl import flags
from ml_collections import config_flags

from matpac_jax import cli, methods
from matpac_jax.training import metrics, trainer, xla_flags
from matpac_jax.training import step as step_lib

FLAGS = flags.FlagValues()
_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.",
                                          flag_values=FLAGS, lock_config=True)
_PER_DEVICE = flags.DEFINE_integer("per_device_batch", 4, "Batch per device.", flag_values=FLAGS)
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps (after one warm-up step).",
                              flag_values=FLAGS)
_JSON = flags.DEFINE_string("json", None, "Also write the results here.", flag_values=FLAGS)
_COMPILE_ONLY = flags.DEFINE_bool(
    "compile_only", False, "Report FLOPs and compiled memory without running a step "
    "(for hardware this machine does not have: python -m matpac_jax.plan).", flag_values=FLAGS)


def _memory(compiled) -> dict:
    """Per-device bytes XLA assigned to the step's arguments (state, batch) and
    temporaries (activations, gradients); best effort per backend."""
    try:
        ma = compiled.memory_analysis()
        return {"argument_bytes": int(ma.argument_size_in_bytes),
                "temp_bytes": int(ma.temp_size_in_bytes)}
    except Exception:  # not every backend reports it
        return {}


def prepare(config, per_device_batch: int, compile_only: bool = False):
    """Build and compile the step; returns (result, timed). `timed(n)` runs n
    steps (the first call also one untimed warm-up) and returns their seconds,
    each blocked on its metrics; None with `compile_only`."""
    config.batch_size = per_device_batch * jax.device_count()
    t0 = time.perf_counter()
    method = methods.get(config)
    step_lib.validate(config, method=method)
    run = step_lib.build(config, method, materialize=not compile_only)
    init_s = time.perf_counter() - t0
    if compile_only:  # shapes only: no state or batch is put on a device
        x = step_lib.abstract_batch(run)
    else:
        rng = np.random.default_rng(0)
        x = trainer._to_global(run, rng.standard_normal(run.batch_shape).astype(np.float32))
    t0 = time.perf_counter()
    compiled, flops = step_lib.compile_step(run, x)
    compile_s = time.perf_counter() - t0
    result = {
        "method": config.method,
        "device": jax.devices()[0].device_kind,
        "devices": jax.device_count(),
        "dtype": config.model.get("dtype", "float32"),
        "remat": config.model.get("remat", "none"),
        "attention": config.model.get("attention", "xla"),
        "grad_accum_steps": config.get("grad_accum_steps", 1),
        "global_batch": config.batch_size,
        "init_s": round(init_s, 2),
        "compile_s": round(compile_s, 2),
        "flop_per_step": flops,
        "tflop_per_step": round(flops / 1e12, 3) if flops else None,
        "gflop_per_sample": round(flops / config.batch_size / 1e9, 1) if flops else None,
        **_memory(compiled),
    }
    if compile_only:
        return result, None
    return result, _Steps(compiled, run.state, x)


class _Steps:
    """Runs the compiled step on its own state; the first call adds an untimed warm-up."""

    def __init__(self, compiled, state, x):
        self.compiled, self.state, self.x = compiled, state, x
        self.done, self.metrics = 0, None

    def _one(self):
        self.state, self.metrics = self.compiled(self.state, self.x, jax.random.key(self.done))
        jax.block_until_ready(self.metrics)
        self.done += 1

    def __call__(self, n: int) -> list[float]:
        if self.done == 0:
            self._one()
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            self._one()
            times.append(time.perf_counter() - t0)
        return times


def benchmark(config, per_device_batch: int, steps: int, compile_only: bool = False) -> dict:
    result, timed = prepare(config, per_device_batch, compile_only)
    if compile_only:
        return result
    step_s = float(np.median(timed(steps)))
    flops = result["flop_per_step"]
    peak = metrics.peak_flops(jax.devices()[0], config.get("peak_flops"))
    result.update({
        "step_s": round(step_s, 4),
        "samples_per_s": round(config.batch_size / step_s, 2),
        "achieved_tflop_s": round(flops / step_s / 1e12, 3) if flops else None,
        "mfu": round(flops / step_s / (peak * jax.device_count()), 4) if flops and peak else None,
        "loss": float(timed.metrics["loss"]),
        **_measured_peak(),
    })
    return result


def _measured_peak() -> dict:
    """The allocator's peak on device 0 after the timed steps (GPU / TPU)."""
    stats = jax.local_devices()[0].memory_stats() or {}
    return {"measured_peak_bytes": int(stats["peak_bytes_in_use"])} \
        if "peak_bytes_in_use" in stats else {}


def main(argv=None) -> int:
    cli.parse(FLAGS, argv, "python benchmarks/bench_step.py", __doc__)
    xla_flags.apply_defaults()  # the flags training runs with
    if _CONFIG.value is None:
        print("error: --config is required", file=sys.stderr)
        return 2
    result = benchmark(_CONFIG.value, _PER_DEVICE.value, _STEPS.value, _COMPILE_ONLY.value)
    print(json.dumps(result, indent=1))
    if _JSON.value:
        with open(cli.output_folder(_JSON.value), "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
