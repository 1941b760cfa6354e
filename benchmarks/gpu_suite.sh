#!/usr/bin/env bash
# Every accelerator training-step measurement of docs/BENCHMARKS.md in one run
# of under 8 minutes on one H100/H200: MATPAC, M2D (ViT-B) and BEATs iter1 at one
# per-device batch, across attention (xla | cudnn), compute dtype (bfloat16 |
# float32) and remat (none | dots). One process per run (an out-of-memory or
# failed run is recorded and the rest go on), each under RUN_TIMEOUT_S (120); runs
# that would start after SUITE_BUDGET_S (360) are skipped and listed: <= 8 min. One JSON and
# log per run in OUT_DIR, then a table with MFU per config.
#
#   benchmarks/gpu_suite.sh [OUT_DIR] [PER_DEVICE_BATCH] [--config.KEY=VALUE ...]
#   RUNS="matpac_as2m:bfloat16:cudnn:none" benchmarks/gpu_suite.sh   # a subset
#
# MFU = XLA's FLOPs / step time / (dense bf16 peak x devices), peaks in
# matpac_jax/training/metrics.py; float32 rows use the same (bf16) peak.
set -uo pipefail
OUT=${1:-bench_out}
PDB=${2:-256}
shift $(($# < 2 ? $# : 2))
cd "$(dirname "$0")/.." || exit 1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.95}
SUITE_BUDGET_S=${SUITE_BUDGET_S:-360}
RUN_TIMEOUT_S=${RUN_TIMEOUT_S:-120}
# config:dtype:attention:remat, most informative first (the budget may cut the tail).
RUNS=${RUNS:-"
matpac_as2m:bfloat16:xla:none
matpac_as2m:bfloat16:cudnn:none
m2d_as2m:bfloat16:cudnn:none
beats_iter1_as2m:bfloat16:cudnn:none
beats_iter1_as2m:bfloat16:xla:none
matpac_as2m:bfloat16:cudnn:dots
beats_iter1_as2m:bfloat16:cudnn:dots
m2d_as2m:bfloat16:xla:none
matpac_as2m:float32:xla:none
matpac_as2m:bfloat16:xla:dots
beats_iter1_as2m:float32:xla:none
"}
mkdir -p "$OUT"
python -c 'import jax; print(jax.__version__, jax.devices())' | tee "$OUT/devices.txt"
start=$SECONDS
: >"$OUT/failures.txt"
for run in $RUNS; do
  IFS=: read -r cfg dtype attention remat <<<"$run"
  name="${cfg}_${dtype}_${attention}_remat_${remat}"
  if ((SECONDS - start > SUITE_BUDGET_S)); then
    echo "$name skipped (suite budget ${SUITE_BUDGET_S}s spent)" | tee -a "$OUT/failures.txt"
    continue
  fi
  echo "[$((SECONDS - start))s] $name"
  timeout "$RUN_TIMEOUT_S" python benchmarks/bench_step.py --config="configs/$cfg.py" \
    --per_device_batch="$PDB" --steps=10 --config.model.dtype="$dtype" \
    --config.model.attention="$attention" --config.model.remat="$remat" \
    --json="$OUT/$name.json" "$@" >"$OUT/$name.log" 2>&1
  rc=$?
  if ((rc != 0)); then
    why=$(grep -m1 -oE "RESOURCE_EXHAUSTED|Out of memory|ValueError: .*" "$OUT/$name.log" || true)
    ((rc == 124)) && why="timed out after ${RUN_TIMEOUT_S}s"
    echo "$name failed (exit $rc: ${why:-see $OUT/$name.log})" | tee -a "$OUT/failures.txt"
  fi
done
echo "suite: $((SECONDS - start)) s"
# The plan (python -m matpac_jax.plan, compile-only) of the same step on this
# GPU kind, for the predicted-vs-measured table below.
kind=$(python -c 'import jax; k = jax.devices()[0].device_kind.lower(); print(next((g for g in ("h200", "h100", "a100") if g in k), ""))')
ngpu=$(python -c 'import jax; print(jax.device_count())')
for run in ${PLAN_RUNS-matpac_as2m:bfloat16:cudnn:none}; do
  [ -n "$kind" ] || break
  IFS=: read -r cfg dtype attention remat <<<"$run"
  name="${cfg}_${dtype}_${attention}_remat_${remat}"
  timeout "$RUN_TIMEOUT_S" python -m matpac_jax.plan --config="configs/$cfg.py" \
    --target="${kind}x${ngpu}" --config.batch_size=$((PDB * ngpu)) \
    --config.model.dtype="$dtype" --config.model.attention="$attention" \
    --config.model.remat="$remat" --json="$OUT/plan_$name.json" "$@" >"$OUT/plan_$name.log" 2>&1 \
    || echo "plan $name: exit $? (see $OUT/plan_$name.log)" | tee -a "$OUT/failures.txt"
done
python - "$OUT" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
print("| config | dtype | attention | remat | device | global batch | compile (s) | step (s) "
      "| samples/s | TFLOP/s | MFU | temp GiB |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
for p in sorted(out.glob("*.json")):
    r = json.loads(p.read_text())
    cfg = p.stem.split(f"_{r['dtype']}_")[0]
    mfu = f"{100 * r['mfu']:.1f} %" if r.get("mfu") else "-"
    print(f"| {cfg} | {r['dtype']} | {r['attention']} | {r['remat']} | {r['device']} "
          f"x{r['devices']} | {r['global_batch']} | {r['compile_s']} | {r['step_s']} "
          f"| {r['samples_per_s']} | {r['achieved_tflop_s']} | {mfu} "
          f"| {r.get('temp_bytes', 0) / 2**30:.1f} |")
plans = sorted(out.glob("plan_*.json"))
if plans:
    print("\n| config | planned peak GiB | measured peak GiB | roofline step (s) | measured step (s) |")
    print("|---|---|---|---|---|")
for p in plans:
    plan = json.loads(p.read_text())
    bench = out / (p.stem.removeprefix("plan_") + ".json")
    r = json.loads(bench.read_text()) if bench.exists() else {}
    measured = r.get("measured_peak_bytes")
    measured = f"{measured / 2**30:.1f}" if measured else "-"
    print(f"| {p.stem.removeprefix('plan_')} | {plan['peak_bytes_per_device'] / 2**30:.1f} | "
          f"{measured} | {plan['roofline_step_s']:.4f} | {r.get('step_s', '-')} |")
failed = (out / "failures.txt").read_text().strip()
if failed:
    print("\nnot measured:\n" + failed)
PY
