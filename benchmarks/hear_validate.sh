#!/usr/bin/env bash
# The official HEAR 2021 validator (`hear-validator`, PyPI hearvalidator) on
# matpac_jax.hear (160 ms timestamps) and matpac_jax.hear_40ms, one run per
# module and checkpoint; prints PASS/FAIL for each and exits non-zero if any
# failed. Logs in OUT_DIR.
#
#   benchmarks/hear_validate.sh [OUT_DIR] [CHECKPOINT ...]
#
# Without checkpoints it validates a tiny MATPAC demo workdir (trained here
# for a few steps on 16 demo clips), /work/shared/fixtures/BEATs_small.pt and
# /work/shared/fixtures/m2d_checkpoint-300.pth (FIXTURES=... to move them).
#
# The validator imports torch and TensorFlow, so it runs in its own venv
# (HEAR_VENV; benchmarks/torch_venv.sh): torch ($TORCH_PIN), tensorflow-cpu,
# the project with its `hear` extra, and hearvalidator with --no-deps (its
# metadata only asks for tensorflow>=2.0 and torch>=1.7, installed above; the
# numpy-1.19-era pins of the HEAR 2021 tooling do not apply to the validator).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-hear_validate_out}
shift $(($# < 1 ? $# : 1))
VENV=${HEAR_VENV:-$HOME/.cache/matpac_jax/hear_venv}
FIXTURES=${FIXTURES:-/work/shared/fixtures}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

source "$ROOT/benchmarks/torch_venv.sh"
torch_venv "$VENV" tensorflow-cpu
[ -x "$VENV/bin/hear-validator" ] || "$VENV/bin/pip" install -q --no-deps hearvalidator
"$VENV/bin/python" -c 'import torch, tensorflow, hearvalidator; print("torch", torch.__version__, "tensorflow", tensorflow.__version__)'

models=("$@")
if [ ${#models[@]} -eq 0 ]; then
  demo="$OUT/demo_workdir"
  if [ ! -d "$demo/checkpoints" ]; then
    shards=$(cd "$ROOT" && python -c "from matpac_jax.data import demo; print(demo.ensure_demo_shards('$OUT/demo_data', 'matpac', num_clips=16))" | tail -1)
    (cd "$ROOT" && python -m matpac_jax.main --config=configs/matpac_as2m.py:demo --workdir="$demo" \
      --config.data.path="$shards" --config.total_steps=4 --config.checkpoint_every=4 \
      --config.log_every=2 --config.opt.warmup_steps=2 --config.batch_size=8 \
      --config.data.crop_frames=64 --config.model.dim=32 --config.model.depth=1 \
      --config.model.num_heads=2 --config.model.pred_dim=32 --config.model.pred_depth=1 \
      --config.model.pred_heads=2 --config.model.head_out_dim=32 \
      --config.model.head_hidden_dim=32 --config.model.head_bottleneck_dim=16) >"$OUT/demo_train.log" 2>&1
  fi
  models=("$demo" "$FIXTURES/BEATs_small.pt" "$FIXTURES/m2d_checkpoint-300.pth")
fi

status=0
for module in ${HEAR_MODULES:-matpac_jax.hear matpac_jax.hear_40ms}; do
  for m in "${models[@]}"; do
    log="$OUT/$module.$(basename "$m").log"
    if (cd "$OUT" && "$VENV/bin/hear-validator" "$module" --model "$m") >"$log" 2>&1 \
        && grep -q "Looks good!" "$log"; then
      echo "PASS $module $m"
    else
      echo "FAIL $module $m (see $log)"; status=1
    fi
    grep -E "Interval between timestamps|embedding_size|Received embedding|UserWarning" "$log" \
      | sed 's/^/    /' || true
  done
done
exit $status
