#!/usr/bin/env bash
# Runs on each TPU worker (train.sh starts it under nohup): a training command in
# ~/matpac_venv, output to logs/train.log, its exit status to logs/exit_code.
# With a gs:// --workdir=, worker 0's TensorBoard events (written to
# ./tensorboard/<run name>, see trainer.py) are copied to WORKDIR/tensorboard
# every minute and fetched back first, so they survive a recreated slice.
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

workdir=""
for arg in "${ARGS[@]}"; do
  if [[ $arg == --workdir=gs://* ]]; then
    workdir=${arg#--workdir=}
  fi
done
events=tensorboard/$(basename "$workdir")
sync_events() {  # sync_events SRC DEST; a missing source is not an error
  if [[ -n $workdir ]]; then
    run gcloud storage rsync --recursive "$1" "$2" 2>/dev/null || true
  fi
}

sync_events "$workdir/tensorboard" "$events"
run_bg "${ARGS[@]}"
status=0
if ! ((DRY_RUN)); then
  next_sync=$((SECONDS + 60))
  while kill -0 "${BG_PIDS[0]}" 2>/dev/null; do
    sleep 1
    if ((SECONDS >= next_sync)) && [[ -d $events ]]; then
      sync_events "$events" "$workdir/tensorboard"
      next_sync=$((SECONDS + 60))
    fi
  done
  wait "${BG_PIDS[0]}" || status=$?
  # The trainer saves and returns normally on SIGTERM or a TPU maintenance
  # event: exit status 0, but not finished.
  if ((status == 0)) && grep -q "after preemption; exiting" logs/train.log; then
    echo preempted >logs/exit_code
  else
    echo "$status" >logs/exit_code
  fi
fi
sync_events "$events" "$workdir/tensorboard"
exit "$status"
