#!/usr/bin/env bash
# The runner of benchmarks/gpu_suite.sh and benchmarks/tpu_suite.sh (they
# set RUNS): each run's measured training step (benchmarks/bench_step.py, one
# process per run, an out-of-memory or failed run is recorded and the rest
# go on, each under RUN_TIMEOUT_S; runs that would start after SUITE_BUDGET_S
# are skipped and listed), then the plan of the first PLAN_COUNT runs for
# this machine's devices (python -m matpac_jax.plan, compile-only), then one
# table with measured step time and MFU beside the plan's roofline
# (benchmarks/suite_table.py).
#
#   RUNS="config:dtype:attention:remat[:activation_dtype] ..." \
#     benchmarks/device_suite.sh OUT_DIR PER_DEVICE_BATCH [--config.KEY=VALUE ...]
set -uo pipefail
OUT=${1:?output folder}
PDB=${2:?per-device batch}
shift 2
cd "$(dirname "$0")/.." || exit 1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
SUITE_BUDGET_S=${SUITE_BUDGET_S:-360}
RUN_TIMEOUT_S=${RUN_TIMEOUT_S:-120}
PLAN_COUNT=${PLAN_COUNT:-4}
mkdir -p "$OUT"
python -c 'import jax; print(jax.__version__, jax.devices())' | tee "$OUT/devices.txt"
start=$SECONDS
: >"$OUT/failures.txt"
name_of() {  # config:dtype:attention:remat[:act] -> the run's file name
  IFS=: read -r cfg dtype attention remat act <<<"$1"
  echo "${cfg}_${dtype}_${attention}_remat_${remat}${act:+_act_$act}"
}
flags_of() {
  IFS=: read -r cfg dtype attention remat act <<<"$1"
  echo "--config=configs/$cfg.py --config.model.dtype=$dtype --config.model.attention=$attention" \
    "--config.model.remat=$remat${act:+ --config.model.activation_dtype=$act}"
}
for run in $RUNS; do
  name=$(name_of "$run")
  if ((SECONDS - start > SUITE_BUDGET_S)); then
    echo "$name skipped (suite budget ${SUITE_BUDGET_S}s spent)" | tee -a "$OUT/failures.txt"
    continue
  fi
  echo "[$((SECONDS - start))s] $name"
  # shellcheck disable=SC2046
  timeout "$RUN_TIMEOUT_S" python benchmarks/bench_step.py $(flags_of "$run") \
    --per_device_batch="$PDB" --steps=10 --json="$OUT/$name.json" "$@" >"$OUT/$name.log" 2>&1
  rc=$?
  if ((rc != 0)); then
    why=$(grep -m1 -oE "RESOURCE_EXHAUSTED|Out of memory|ValueError: .*" "$OUT/$name.log" || true)
    ((rc == 124)) && why="timed out after ${RUN_TIMEOUT_S}s"
    echo "$name failed (exit $rc: ${why:-see $OUT/$name.log})" | tee -a "$OUT/failures.txt"
  fi
done
echo "suite: $((SECONDS - start)) s"
target=$(python benchmarks/suite_table.py --target)
ndev=$(python -c 'import jax; print(jax.device_count())')
for run in $(echo $RUNS | tr ' ' '\n' | head -n "$PLAN_COUNT"); do
  [ -n "$target" ] || break
  name=$(name_of "$run")
  # shellcheck disable=SC2046
  timeout "$RUN_TIMEOUT_S" python -m matpac_jax.plan $(flags_of "$run") --target="$target" \
    --config.batch_size=$((PDB * ndev)) --json="$OUT/plan_$name.json" "$@" \
    >"$OUT/plan_$name.log" 2>&1 \
    || [ $? -eq 1 ] || echo "plan $name: failed (see $OUT/plan_$name.log)" | tee -a "$OUT/failures.txt"
done
python benchmarks/suite_table.py "$OUT"
