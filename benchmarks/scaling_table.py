"""docs/SCALING.md's tables from `python -m matpac_jax.plan --json` outputs.

  python benchmarks/scaling_table.py PLAN.json [PLAN.json ...]
  python benchmarks/scaling_table.py --traffic PLAN.json ...   # memory traffic by category

For each plan (one method compiled for one target at its official global
batch): its memory, FLOPs, collectives and roofline, the projected
chip-hours of the method's official schedule at 40 % and 60 % MFU, and, per
TPU generation and GPU kind, the smallest slice whose per-device batch is
predicted to fit. The prediction scales the compiled temporaries with the
per-device batch (arguments stay: data parallel keeps a full copy per
device); a slice size must divide the global batch. Predictions are marked;
rows compiled by `plan` are the JSON files themselves. A second table gives
the schedule's chip-hours on each chip kind: total model FLOPs / (MFU x the
chip's peak bf16 FLOP/s).
"""
from __future__ import annotations

import json
import sys

from absl import flags

from matpac_jax import cli
from matpac_jax.planning import targets

GiB = 2**30
# Slice sizes a user can rent, smallest first (TPU: chips; GPU: GPUs).
SIZES = {
    "v4": [(f"v4-{2 * c}", c) for c in (4, 8, 16, 32, 64, 128, 256, 512)],
    "v5e": [(f"v5e-{c}", c) for c in (1, 4, 8, 16, 32, 64, 128, 256)],
    "v5p": [(f"v5p-{2 * c}", c) for c in (4, 8, 16, 32, 64, 128, 256, 512)],
    "v6e": [(f"v6e-{c}", c) for c in (1, 4, 8, 16, 32, 64, 128, 256)],
    "h100": [(f"h100x{c}" if c <= 8 else f"h100x8x{c // 8}", c) for c in (1, 2, 4, 8, 16, 32, 64)],
    "h200": [(f"h200x{c}" if c <= 8 else f"h200x8x{c // 8}", c) for c in (1, 2, 4, 8, 16, 32, 64)],
}


def predicted_peak(plan: dict, devices: int, chip: targets.Chip) -> float:
    """Peak bytes per device of the same plan on `devices` chips of `chip`."""
    per_device = plan["global_batch"] / devices
    temp_per_sample = plan["temp_bytes_per_device"] / plan["microbatch_per_device"]
    micro = per_device / plan["grad_accum_steps"]
    return plan["peak_bytes_per_device"] - plan["temp_bytes_per_device"] + temp_per_sample * micro


def smallest(plan: dict, family: str) -> tuple[str, int, float] | None:
    """(target, devices, predicted peak) of the smallest slice that fits, or None."""
    chip = targets.CHIPS[family]
    for name, n in SIZES[family]:
        if plan["global_batch"] % (n * plan["grad_accum_steps"]):
            continue
        budget = targets.parse(name).memory_budget() * (1 - plan["headroom"])
        peak = predicted_peak(plan, n, chip)
        if peak <= budget:
            return name, n, peak
    return None


def chip_hours(plan: dict, total_steps: int, mfu: float) -> float:
    chip = next(c for c in targets.CHIPS.values() if c.name == plan["chip"])
    return total_steps * plan["flops_per_step"] / (mfu * chip.peak_flops) / 3600


def traffic_table(files: list[str]) -> list[str]:
    """Memory traffic per sample by category (plan's `traffic`), the model
    FLOPs per byte and the roofline MFU cap by XLA's count and for the
    arrays in HBM, one row per plan."""
    from matpac_jax.planning.hlo_bytes import CATEGORIES

    plans = {f: json.load(open(f, encoding="utf-8")) for f in files}
    cats = [c for c in CATEGORIES if any(c in (p.get("traffic") or {}).get("categories", {})
                                         for p in plans.values())]
    lines = ["| plan | " + " | ".join(cats) + " | total MB/sample (XLA) | FLOP/byte XLA, HBM "
             "| MFU cap XLA, HBM | peak GiB |", "|---|" + "---|" * (len(cats) + 4)]
    for f, p in plans.items():
        t, per = p.get("traffic"), p["microbatch_per_device"]
        if not t:
            continue
        flops = p["flops_per_step"] / p["devices"]
        cells = [f"{t['categories'].get(c, {}).get('bytes', 0) / per / 1e6:.0f}" for c in cats]
        xla = p["hbm_bytes_accessed_per_device"]
        r = p["roofline"]
        lines.append(f"| {f} | " + " | ".join(cells) + f" | {xla / per / 1e6:.0f} | "
                     f"{flops / xla:.0f}, {flops / t['hbm_bytes']:.0f} | "
                     f"{100 * p['roofline_mfu']:.0f} %, {100 * r['resident_mfu']:.0f} % | "
                     f"{p['peak_bytes_per_device'] / GiB:.1f} |")
    return lines


FLAGS = flags.FlagValues()
flags.DEFINE_integer("total_steps", 0, "steps of the schedule (0: the plan's config's "
                     "total_steps)", flag_values=FLAGS)
flags.DEFINE_bool("traffic", False, "print the memory-traffic table instead (MB per sample "
                  "by category, FLOP per byte, MFU cap)", flag_values=FLAGS)


def main(argv=None) -> int:
    files = cli.parse(FLAGS, argv, "python benchmarks/scaling_table.py", __doc__,
                      positional="plan JSON files")
    if FLAGS.traffic:
        print("\n".join(traffic_table(files)))
        return 0
    print("| plan | chips | per chip | peak GiB / HBM | GFLOP/sample | collectives MiB/step "
          "| roofline samples/s | chip-h @40 % | chip-h @60 % | smallest fitting (predicted) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for f in files:
        with open(f, encoding="utf-8") as fh:
            p = json.load(fh)
        steps = FLAGS.total_steps or p.get("total_steps") or 0
        coll = sum(c["bytes"] for c in p["collectives"].values()) / 2**20
        fits = ", ".join(
            f"{s[0]} ({s[2] / GiB:.0f} GiB)" if s else f"none of {fam}"
            for fam in SIZES for s in [smallest(p, fam)])
        hours = (f"{chip_hours(p, steps, 0.4):,.0f} | {chip_hours(p, steps, 0.6):,.0f}"
                 if steps else "- | -")
        print(f"| {f} | {p['devices']} x {p['chip']} | {p['per_device_batch']} | "
              f"{p['peak_bytes_per_device'] / GiB:.1f} / {p['hbm_bytes_per_device'] / GiB:.0f} "
              f"| {p['flops_per_sample'] / 1e9:.1f} | {coll:.0f} | "
              f"{p['roofline_samples_per_s']:,.0f} | {hours} | {fits} |")
    print("\n| plan | steps | PFLOP total | " + " | ".join(
        f"{fam} chip-h @40 % / 60 %" for fam in SIZES) + " |")
    print("|---|---|---|" + "---|" * len(SIZES))
    for f in files:
        with open(f, encoding="utf-8") as fh:
            p = json.load(fh)
        steps = FLAGS.total_steps or p.get("total_steps") or 0
        total = steps * p["flops_per_step"]
        cells = [f"{total / (m * targets.CHIPS[fam].peak_flops) / 3600:,.0f}"
                 for fam in SIZES for m in (0.4, 0.6)]
        print(f"| {f} | {steps:,} | {total / 1e15:,.0f} | "
              + " | ".join(f"{a} / {b}" for a, b in zip(cells[::2], cells[1::2])) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
