#!/usr/bin/env bash
# Train on one host with N GPUs: a single process drives every local GPU (the
# batch is split across them), so no distributed set-up is needed. Choose GPUs
# with CUDA_VISIBLE_DEVICES. Re-running the same command resumes.
#
#   launch/gpu/single_host.sh --workdir /data/runs/matpac --data /data/as2m_matpac \
#       [--config configs/matpac_as2m.py] [--python python] [--dry-run] [-- --config.KEY=VALUE ...]
set -euo pipefail
# shellcheck source=launch/common.sh
source "$(dirname "$0")/../common.sh"
CONFIG=configs/matpac_as2m.py WORKDIR="" DATA="" PYTHON=python
parse_opts "config workdir data python" "$@"
need WORKDIR

main_command "$PYTHON"
run cd "$ROOT"
run "${MAIN[@]}"
