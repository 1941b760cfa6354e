#!/usr/bin/env bash
# `python -m matpac_jax.plan` for NVIDIA GPU targets, on a machine without a
# GPU: MATPAC, M2D and BEATs iter1 at their official global batch, with
# attention xla and cudnn. XLA's GPU compiler comes with jax[cuda12] (3.2 GB of
# wheels), so it runs in its own venv (PLAN_GPU_VENV, created on first use,
# with the system site packages so the project's jax/flax are reused); CI does
# not run it. One JSON and log per plan in OUT_DIR, then a table.
#
#   benchmarks/plan_gpu.sh [OUT_DIR] [TARGET] [--config.KEY=VALUE ...]   # TARGET default h100x8
#   RUNS="matpac_as2m:cudnn" benchmarks/plan_gpu.sh out h200x8            # a subset
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-plan_gpu_out}
TARGET=${2:-h100x8}
shift $(($# < 2 ? $# : 2))
VENV=${PLAN_GPU_VENV:-$HOME/.cache/matpac_jax/plan_gpu_venv}
JAX_VERSION=$(python3 -c 'import jax; print(jax.__version__)')
RUNS=${RUNS:-"matpac_as2m:cudnn matpac_as2m:xla m2d_as2m:cudnn beats_iter1_as2m:cudnn"}
mkdir -p "$OUT"
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import jax_cuda12_plugin' 2>/dev/null; then
  python3 -m venv --system-site-packages "$VENV"
  "$VENV/bin/pip" install -q "jax[cuda12]==$JAX_VERSION"
fi
cd "$ROOT"
for run in $RUNS; do
  IFS=: read -r cfg attention <<<"$run"
  name="${TARGET}_${cfg}_${attention}"
  echo "$name"
  # exit 1: the plan does not fit (its JSON says by how much); other codes are failures
  "$VENV/bin/python" -m matpac_jax.plan --config="configs/$cfg.py" --target="$TARGET" \
    --config.model.attention="$attention" --json="$OUT/$name.json" "$@" >"$OUT/$name.log" 2>&1 \
    || [ $? -eq 1 ] || echo "$name failed: see $OUT/$name.log"
done
"$VENV/bin/python" - "$OUT" <<'PY'
import json, pathlib, sys
print("| plan | attention | per device | peak GiB (usable) | fits | GFLOP/sample | collectives MiB | roofline samples/s | compile s |")
print("|---|---|---|---|---|---|---|---|---|")
for p in sorted(pathlib.Path(sys.argv[1]).glob("*.json")):
    r = json.loads(p.read_text())
    coll = sum(c["bytes"] for c in r["collectives"].values()) / 2**20
    print(f"| {p.stem} | {r['attention']} | {r['per_device_batch']} | "
          f"{r['peak_bytes_per_device'] / 2**30:.1f} ({r['memory_budget_bytes'] / 2**30:.1f}) | "
          f"{r['fits']} | {r['flops_per_sample'] / 1e9:.1f} | {coll:.0f} | "
          f"{r['roofline_samples_per_s']:.0f} | {r['compile_s']} |")
PY
