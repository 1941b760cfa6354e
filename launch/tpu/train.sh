#!/usr/bin/env bash
# Start training on every worker of the slice, detached (it keeps running when
# this returns or the connection drops): the same command on all workers,
#   python -m matpac_jax.main --config=CONFIG --workdir=WORKDIR [--config.data.path=DATA] [ARGS...]
# under launch/tpu/worker_run.sh, which writes ~/matpac_jax/logs/train.log on each
# worker. JAX finds the other workers itself. Re-running after a stop or a
# recreated slice resumes from the latest checkpoint in WORKDIR.
#
#   launch/tpu/train.sh --name matpac --zone us-central2-b --project MY_PROJECT \
#       --workdir gs://MY_BUCKET/matpac --data /mnt/gcs/as2m_matpac \
#       [--config configs/matpac_as2m.py] [--dry-run] [-- --config.KEY=VALUE ...]
set -euo pipefail
# shellcheck source=launch/tpu/tpu.sh
source "$(dirname "$0")/tpu.sh"
tpu_parse "$@"
need CONFIG WORKDIR

main_command python
tpu_ssh all "cd matpac_jax && nohup bash launch/tpu/worker_run.sh $(shell_quote "${MAIN[@]}") \
>/dev/null 2>&1 </dev/null &"
note "started; follow it with launch/tpu/logs.sh (same --name/--zone)"
