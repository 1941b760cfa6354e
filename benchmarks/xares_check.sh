#!/usr/bin/env bash
# X-ARES's own checks on the encoder files `python -m matpac_jax.xares`
# writes: for each checkpoint, the file is loaded as `python -m xares.run`
# loads it (xares.utils.attr_from_py_path: the one name ending in
# `Encoder`, built with no arguments) and passed to
# xares.audio_encoder_checker.check_audio_encoder; then tests/test_xares.py
# and the torch shell test of tests/test_hear.py run with torch. Prints
# PASS/FAIL per checkpoint and exits non-zero if anything failed. Files and
# logs in OUT_DIR.
#
#   benchmarks/xares_check.sh [OUT_DIR] [CHECKPOINT ...]
#
# Without checkpoints it checks the fixtures m2d_checkpoint-300.pth,
# matpac_flat.pt and BEATs_small.pt (FIXTURES=... to move them). The venv
# (XARES_VENV; benchmarks/torch_venv.sh) holds torch ($TORCH_PIN), xares
# ($XARES_PIN) with its dependencies, and this tree.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-xares_check_out}
shift $(($# < 1 ? $# : 1))
VENV=${XARES_VENV:-$HOME/.cache/matpac_jax/xares_venv}
XARES_PIN=${XARES_PIN:-xares==0.1.3}
FIXTURES=${FIXTURES:-$ROOT/tests/fixtures}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

source "$ROOT/benchmarks/torch_venv.sh"
torch_venv "$VENV" "$XARES_PIN"
# The checker and the loader need torch only; xares.run also imports torchaudio,
# whose PyPI wheel is built against CUDA torch and does not load beside a CPU one.
"$VENV/bin/python" -c 'import importlib.metadata as m, torch, xares.audio_encoder_checker, xares.utils; print("torch", torch.__version__, "xares", m.version("xares"))'

models=("$@")
[ ${#models[@]} -gt 0 ] || models=("$FIXTURES/m2d_checkpoint-300.pth" "$FIXTURES/matpac_flat.pt" "$FIXTURES/BEATs_small.pt")

status=0
for i in "${!models[@]}"; do
  m=${models[$i]}
  file="encoder_$i.py"
  log="$OUT/encoder_$i.log"
  if (cd "$OUT" && "$VENV/bin/python" -m matpac_jax.xares --checkpoint="$m" --out="$file" \
        && "$VENV/bin/python" -c '
import sys
from xares.audio_encoder_checker import check_audio_encoder
from xares.utils import attr_from_py_path
encoder = attr_from_py_path(sys.argv[1], endswith="Encoder")()
print(type(encoder).__name__, "output_dim", encoder.output_dim, "hop_size_in_ms", encoder.hop_size_in_ms)
sys.exit(0 if check_audio_encoder(encoder) else 1)' "$file") >"$log" 2>&1; then
    echo "PASS $m ($OUT/$file)"
  else
    echo "FAIL $m (see $log)"; status=1
  fi
  grep -E "output_dim|ERROR" "$log" | sed 's/^/    /' || true
done

if (cd "$ROOT" && "$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/test_xares.py \
      tests/test_hear.py::test_torch_shell_takes_and_returns_tensors) >"$OUT/pytest.log" 2>&1; then
  echo "PASS tests with torch: $(tail -1 "$OUT/pytest.log")"
else
  echo "FAIL tests with torch (see $OUT/pytest.log)"; status=1
fi
exit $status
