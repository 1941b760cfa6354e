"""Where one training step's time goes on XLA:CPU, by phase and op kind.

  python benchmarks/profile_step.py --config=configs/matpac_as2m.py --per_device_batch=4 \
      --config.model.dtype=float32 [--steps=3] [--out=/tmp/step_profile]

Traces `--steps` jitted steps (after a warm-up) with XLA:CPU's per-op
TraceMe events, then sums each executed HLO op's time per step into
phase (forward, backward, update: optimiser, EMA and clipping, i.e. ops not
under autodiff) x kind (matmul; attention: batched dots and the softmax
fused into them; layout: copies and transposes; broadcast; elementwise and
reductions). Op times on the two cores overlap, so the sum exceeds the
wall step time. The PyTorch counterpart is
`torch_reference.py bench --profile` (docs/BENCHMARKS.md).
"""
from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
import sys

if "--xla_cpu_enable_xprof_traceme" not in os.environ.get("XLA_FLAGS", ""):  # before jax
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_cpu_enable_xprof_traceme=true").strip()

import jax  # noqa: E402
from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from matpac_jax import cli  # noqa: E402

FLAGS = flags.FlagValues()
_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.",
                                          flag_values=FLAGS, lock_config=True)
_PER_DEVICE = flags.DEFINE_integer("per_device_batch", 4, "Batch per device.", flag_values=FLAGS)
_STEPS = flags.DEFINE_integer("steps", 3, "Traced steps.", flag_values=FLAGS)
_OUT = flags.DEFINE_string("out", "/tmp/step_profile", "Trace folder.", flag_values=FLAGS)

KINDS = ("matmul", "attention", "layout", "broadcast", "elementwise")


def _computations(hlo: str) -> dict[str, str]:
    return {m.group(1): m.group(2) for m in
            re.finditer(r"\n%([\w.\-]+) \(.*?\) -> .*? \{\n(.*?)\n\}", hlo, re.S)}


def classify(hlo: str) -> dict[str, tuple[str, str]]:
    """Entry-computation op name -> (phase, kind)."""
    bodies = _computations(hlo)
    out = {}
    for line in hlo.splitlines():
        m = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = \S+ (\w+)\((.*)", line)
        if not m:
            continue
        name, opcode, rest = m.groups()
        called = re.search(r"calls=%([\w.\-]+)", rest)
        body = bodies.get(called.group(1), "") if called else line
        op_name = re.search(r'op_name="([^"]*)"', line)
        op_name = op_name.group(1) if op_name else ""
        phase = ("backward" if "transpose(jvp" in op_name
                 else "forward" if "jvp(" in op_name else "update")
        if " dot(" in body:
            kind = "attention" if "lhs_batch_dims" in body else "matmul"
        elif opcode in ("copy", "transpose") or name.startswith(("copy", "transpose")):
            kind = "layout"
        elif "broadcast" in name and len(re.findall(r" = ", body)) <= 3:
            kind = "broadcast"
        else:
            kind = "elementwise"
        out[name] = (phase, kind)
    return out


def summarize(trace_dir: str, hlo: str, steps: int) -> dict:
    path = max(glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True),
               key=os.path.getmtime)  # this run's trace
    with gzip.open(path) as f:
        events = [e for e in json.load(f)["traceEvents"] if e.get("ph") == "X"]
    kinds = classify(hlo)
    table = collections.defaultdict(float)
    for e in events:
        if e["name"] in kinds:
            table[kinds[e["name"]]] += e["dur"] / 1e3 / steps
    return {f"{p}/{k}": round(v, 1) for (p, k), v in sorted(table.items())}


def main(argv=None) -> int:
    cli.parse(FLAGS, argv, "python benchmarks/profile_step.py", __doc__)
    if _CONFIG.value is None:
        print("error: --config is required", file=sys.stderr)
        return 2
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from benchmarks import bench_step

    result, steps = bench_step.prepare(_CONFIG.value, _PER_DEVICE.value)
    wall = steps(2)  # warm-up + two untraced steps
    run_hlo = steps.compiled.as_text()
    jax.profiler.start_trace(_OUT.value, create_perfetto_trace=True)
    traced = steps(_STEPS.value)
    jax.profiler.stop_trace()
    table = summarize(_OUT.value, run_hlo, _STEPS.value)
    phases = ("forward", "backward", "update")
    print(f"{result['method']}: untraced step {min(wall):.3f} s, traced {min(traced):.3f} s, "
          f"load {os.getloadavg()[0]:.1f}; op time per step (ms):")
    print("| phase | " + " | ".join(KINDS) + " | total |")
    print("|---" * (len(KINDS) + 2) + "|")
    for p in phases:
        row = [table.get(f"{p}/{k}", 0.0) for k in KINDS]
        print(f"| {p} | " + " | ".join(f"{v:.0f}" for v in row) + f" | {sum(row):.0f} |")
    col = [sum(table.get(f"{p}/{k}", 0.0) for p in phases) for k in KINDS]
    print("| all | " + " | ".join(f"{v:.0f}" for v in col) + f" | {sum(col):.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
