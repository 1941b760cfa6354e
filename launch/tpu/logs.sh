#!/usr/bin/env bash
# Follow the training log of one worker (worker 0 unless --worker N; Ctrl-C
# stops following, not training), or with --tensorboard serve TensorBoard from
# worker 0 at http://localhost:6006 through an ssh tunnel.
#
#   launch/tpu/logs.sh --name matpac --zone us-central2-b --project MY_PROJECT [--worker N] [--dry-run]
#   launch/tpu/logs.sh --name matpac --zone us-central2-b --project MY_PROJECT --tensorboard
set -euo pipefail
# shellcheck source=launch/tpu/tpu.sh
source "$(dirname "$0")/tpu.sh"
tpu_parse "$@"

if ((TENSORBOARD)); then
  tpu_ssh 0 "matpac_venv/bin/tensorboard --logdir matpac_jax/tensorboard --port 6006" \
    -- -L 6006:localhost:6006
else
  tpu_ssh "$WORKER" "tail -n 200 -F matpac_jax/logs/train.log"
fi
