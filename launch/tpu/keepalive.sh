#!/usr/bin/env bash
# Run training to the end on a slice that can be preempted (--spot): every
# --poll seconds (300), read the queued resource's state and act on it:
#   none yet            create.sh, install.sh, train.sh
#   SUSPENDED / FAILED  (preempted) delete.sh, then as above: the new run
#                       resumes from the latest checkpoint in WORKDIR
#   ACTIVE              ask worker 0 how training is: running -> wait;
#                       exit status 0 -> done (delete.sh with --delete-when-done);
#                       preempted (checkpoint saved on SIGTERM) -> install.sh + train.sh;
#                       failed or stopped -> install.sh + train.sh again, at
#                       most --max-restarts (3) times
#   anything else       (waiting for capacity, provisioning, ...) wait
# Takes the options of create.sh, install.sh and train.sh, passed on unchanged.
# --dry-run walks through the cases: none, ACTIVE/running, ACTIVE/preempted,
# SUSPENDED, ACTIVE/finished.
#
#   launch/tpu/keepalive.sh --name matpac --zone us-central2-b --project MY_PROJECT \
#       --accelerator v4-32 --spot --bucket MY_BUCKET --workdir gs://MY_BUCKET/matpac \
#       --data /mnt/gcs/as2m_matpac [--poll 300] [--max-restarts 3] [--delete-when-done] \
#       [--dry-run] [-- --config.KEY=VALUE ...]
set -euo pipefail
here=$(dirname "$0")
# shellcheck source=launch/tpu/tpu.sh
source "$here/tpu.sh"
all_args=("$@")
tpu_parse "$@"
need ACCELERATOR WORKDIR

recreate() {  # recreate [OLD_STATE]: a new slice running the training command
  if [[ -n ${1:-} ]]; then
    note "$NAME is $1 (preempted?): deleting it, creating a new slice, re-running training"
    "$here/delete.sh" "${all_args[@]}" || return
  else
    note "no queued resource $NAME: creating the slice, installing, starting training"
  fi
  "$here/create.sh" "${all_args[@]}" && "$here/install.sh" "${all_args[@]}" \
    && "$here/train.sh" "${all_args[@]}"
}

rerun() {  # the same slice: install again (cheap when nothing changed), train again
  "$here/install.sh" "${all_args[@]}" && "$here/train.sh" "${all_args[@]}"
}

training_status() {  # running, stopped, an exit status, or unreachable
  tpu_ssh --query 0 "cd matpac_jax && bash launch/tpu/worker_run.sh --status" 2>/dev/null \
    || echo unreachable
}

dry_states=("" ACTIVE:running ACTIVE:preempted SUSPENDED ACTIVE:0)  # --dry-run: state:training status
round=0
restarts=0
while true; do
  state=$(qr_state)
  if ((DRY_RUN)); then
    ((round < ${#dry_states[@]})) || break
    state=${dry_states[round]}
    note "dry run, round $((round + 1)): suppose the state is '${state%%:*}'"
  fi
  round=$((round + 1))
  case ${state%%:*} in
    "") recreate || note "will retry" ;;
    SUSPENDED|FAILED) recreate "$state" || note "will retry" ;;
    ACTIVE)
      status=$(training_status)
      if ((DRY_RUN)); then
        status=${state#*:}
        note "suppose worker 0 answers: $status"
      fi
      case $status in
        running|unreachable) note "$NAME is ACTIVE, training: $status" ;;
        0)
          note "training finished"
          break
          ;;
        preempted)
          note "training saved a checkpoint and stopped on a preemption notice: re-running it"
          rerun || note "will retry"
          ;;
        *)
          restarts=$((restarts + 1))
          ((restarts <= MAX_RESTARTS)) || die "training failed ($status) $MAX_RESTARTS times; see logs.sh"
          note "training ended with '$status' on an ACTIVE slice: re-running it ($restarts of $MAX_RESTARTS)"
          rerun || note "will retry"
          ;;
      esac
      ;;
    *) note "$NAME is $state: waiting" ;;
  esac
  run sleep "$POLL"
done
if ((DELETE_WHEN_DONE)); then
  "$here/delete.sh" "${all_args[@]}"
fi
