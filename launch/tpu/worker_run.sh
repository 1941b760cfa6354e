#!/usr/bin/env bash
# Runs on each TPU worker (train.sh starts it under nohup): a training command in
# ~/matpac_venv, output to logs/train.log, its exit status to logs/exit_code
# ("preempted" for 75: the trainer saved a checkpoint on SIGTERM and stopped
# before its last step, errors.Preempted). TensorBoard events go straight to
# WORKDIR/tensorboard, gs:// included.
#
#   cd ~/matpac_jax && bash launch/tpu/worker_run.sh [--dry-run] python -m matpac_jax.main --config=... --workdir=...
#   cd ~/matpac_jax && bash launch/tpu/worker_run.sh --status
# --status prints running, stopped (no record: e.g. the VM restarted), preempted
# (the trainer saved a checkpoint on SIGTERM and exited), or the exit status.
set -euo pipefail
# shellcheck source=launch/common.sh
source "$(dirname "$0")/../common.sh"
STATUS=0
parse_opts "status!" "$@"
cd "$ROOT"

running() {  # is the wrapper recorded in logs/pid alive?
  local pid
  pid=$(cat logs/pid 2>/dev/null) || return 1
  grep -qs worker_run "/proc/$pid/cmdline"
}

if ((STATUS)); then
  if running; then
    echo running
  elif [[ -f logs/exit_code ]]; then
    cat logs/exit_code
  else
    echo stopped
  fi
  exit 0
fi

((${#ARGS[@]})) || die "no command given (see --help)"
if running; then
  die "already running (pid $(cat logs/pid)); see logs/train.log"
fi
if ! ((DRY_RUN)); then
  mkdir -p logs
  rm -f logs/exit_code
  echo $$ >logs/pid
  exec >logs/train.log 2>&1
  # shellcheck source=/dev/null
  source "$HOME/matpac_venv/bin/activate"
fi

run_bg "${ARGS[@]}"
status=0
if ! ((DRY_RUN)); then
  wait "${BG_PIDS[0]}" || status=$?
  if ((status == 75)); then  # errors.Preempted: a checkpoint is saved, the run is not done
    echo preempted >logs/exit_code
  else
    echo "$status" >logs/exit_code
  fi
fi
exit "$status"
