#!/usr/bin/env bash
# Regenerates tests/fixtures/trajectory_*.npz: inputs from our code (JAX, this
# environment), 50 official updates from the PyTorch restatement (TORCH_PY, a
# separate environment with torch and numpy), for MATPAC, M2D and BEATs iter1.
#
#   TORCH_PY=/tmp/tv/bin/python benchmarks/make_trajectory_fixtures.sh
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_PY=${TORCH_PY:-/tmp/tv/bin/python}
TMP=$(mktemp -d)
for method in matpac m2d beats_iter1; do
  JAX_PLATFORMS=cpu python benchmarks/trajectory.py --method "$method" \
    --out "$TMP/$method.in.npz" --workdir "$TMP/work"
  "$TORCH_PY" benchmarks/torch_reference.py trajectory "$TMP/$method.in.npz" \
    "tests/fixtures/trajectory_$method.npz"
done
rm -rf "$TMP"
