"""Tables of a device suite run (benchmarks/gpu_suite.sh, tpu_suite.sh): the
measured steps of benchmarks/bench_step.py, and beside each the plan of the
same step for the same hardware (`python -m matpac_jax.plan`, compile-only):
its roofline step time and MFU cap, what bounds it, and its memory.

  python benchmarks/suite_table.py OUT_DIR
  python benchmarks/suite_table.py --target     # this machine's plan target, e.g. v5p-16

Run names are CONFIG_DTYPE_ATTENTION_remat_REMAT[_act_ACTIVATIONS]; a plan
of a run is plan_<run name>.json.
"""
from __future__ import annotations

import json
import pathlib
import sys

from absl import flags

from matpac_jax import cli

FLAGS = flags.FlagValues()
flags.DEFINE_bool("target", False, "print the plan target of this machine's devices and exit",
                  flag_values=FLAGS)


def bound(plan: dict) -> str:
    """What limits the plan's roofline step: compute, HBM or collectives."""
    r = plan["roofline"]
    parts = {"compute": r["compute_s"], "HBM": r.get("hbm_s") or 0.0,
             "collectives": r["collectives_s"]}
    return max(parts, key=parts.get)


def rows(out: pathlib.Path) -> list[str]:
    lines = ["| run | device | global batch | step s (measured / roofline) "
             "| MFU (measured / roofline cap) | roofline bound | model FLOP per HBM byte "
             "| peak GiB (measured / planned) |", "|---|---|---|---|---|---|---|---|"]
    for p in sorted(out.glob("*.json")):
        if p.stem.startswith("plan_"):
            continue
        r = json.loads(p.read_text())
        plan_file = out / f"plan_{p.stem}.json"
        plan = json.loads(plan_file.read_text()) if plan_file.exists() else None
        fmt = lambda v, f: f.format(v) if v is not None else "-"
        measured_peak = r.get("measured_peak_bytes")
        cells = [p.stem, f"{r['device']} x{r['devices']}", str(r["global_batch"])]
        if plan:
            per_device = plan["flops_per_step"] / plan["devices"]
            hbm = plan.get("hbm_bytes_accessed_per_device")
            cells += [f"{fmt(r.get('step_s'), '{:.4f}')} / {plan['roofline_step_s']:.4f}",
                      f"{fmt(r.get('mfu'), '{:.1%}')} / {plan['roofline_mfu']:.0%}", bound(plan),
                      fmt(per_device / hbm if hbm else None, "{:.0f}"),
                      f"{fmt(measured_peak and measured_peak / 2**30, '{:.1f}')} / "
                      f"{plan['peak_bytes_per_device'] / 2**30:.1f}"]
        else:
            cells += [f"{fmt(r.get('step_s'), '{:.4f}')} / -", f"{fmt(r.get('mfu'), '{:.1%}')} / -",
                      "-", "-", f"{fmt(measured_peak and measured_peak / 2**30, '{:.1f}')} / -"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main(argv=None) -> int:
    args = cli.parse(FLAGS, argv, "python benchmarks/suite_table.py", __doc__,
                     positional="the suite's output folder")
    if FLAGS.target:
        import jax

        from matpac_jax.planning import targets

        name = targets.name_of(jax.devices()[0].device_kind, jax.device_count(),
                               jax.process_count())
        print(name or "")
        return 0 if name else 1
    if len(args) != 1:
        print("error: one output folder (python benchmarks/suite_table.py --help)",
              file=sys.stderr)
        return 2
    out = pathlib.Path(args[0])
    print("\n".join(rows(out)))
    failed = out / "failures.txt"
    if failed.exists() and failed.read_text().strip():
        print("\nnot measured:\n" + failed.read_text().strip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
