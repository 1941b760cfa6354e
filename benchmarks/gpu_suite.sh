#!/usr/bin/env bash
# The accelerator training-step measurements of docs/BENCHMARKS.md in one go:
# MATPAC, M2D (ViT-B) and BEATs iter1 in bf16 at one per-device batch, each
# with remat off and with `dots` (an out-of-memory run is recorded and the
# rest go on); one JSON per run in OUT_DIR, then a table.
#
#   benchmarks/gpu_suite.sh [OUT_DIR] [PER_DEVICE_BATCH] [--config.KEY=VALUE ...]
set -euo pipefail
OUT=${1:-bench_out}
PDB=${2:-256}
shift $(($# < 2 ? $# : 2))
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
python -c 'import jax; print(jax.devices())' | tee "$OUT/devices.txt"
for cfg in matpac_as2m m2d_as2m beats_iter1_as2m; do
  for remat in none dots; do
    name="${cfg}_remat_${remat}"
    if ! python benchmarks/bench_step.py --config="configs/$cfg.py" --per_device_batch="$PDB" \
        --steps=10 --config.model.remat="$remat" --json="$OUT/$name.json" "$@" \
        >"$OUT/$name.log" 2>&1; then
      echo "$name failed; see $OUT/$name.log" | tee -a "$OUT/failures.txt"
    fi
  done
done
python - "$OUT" <<'PY'
import json, pathlib, sys
print("| run | device | global batch | step (s) | samples/s | TFLOP/s | MFU | temp GiB |")
print("|---|---|---|---|---|---|---|---|")
for p in sorted(pathlib.Path(sys.argv[1]).glob("*.json")):
    r = json.loads(p.read_text())
    print(f"| {p.stem} | {r['device']} x{r['devices']} | {r['global_batch']} | {r['step_s']} "
          f"| {r['samples_per_s']} | {r['achieved_tflop_s']} | {r['mfu']} "
          f"| {r.get('temp_bytes', 0) / 2**30:.1f} |")
PY
