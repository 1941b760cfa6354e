# shellcheck shell=bash
# Sourced by the launch/tpu scripts. They all take the same options (each uses
# the ones it needs), so one option list can be kept in an array and passed to
# every script, and keepalive.sh passes its own arguments on unchanged.
#
# On the workers (ssh starts in the home directory): the code in ~/matpac_jax,
# a Python 3.11 virtual environment in ~/matpac_venv, the bucket (--bucket)
# mounted at /mnt/gcs, training output in ~/matpac_jax/logs/.

# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

TPU_OPTIONS="name zone project accelerator runtime-version spot! repo ref bucket
  config workdir data input output frontend labels classes num-shards num-workers worker tensorboard!
  poll max-restarts delete-when-done!"
# shellcheck disable=SC2034  # each script uses some of these
{
  NAME="" ZONE="" PROJECT="" ACCELERATOR="" RUNTIME_VERSION="" SPOT=0
  REPO="" REF=main BUCKET=""
  CONFIG=configs/matpac_as2m.py WORKDIR="" DATA=""
  INPUT="" OUTPUT="" FRONTEND=matpac LABELS="" CLASSES="" NUM_SHARDS="" NUM_WORKERS=""
  WORKER=0 TENSORBOARD=0 POLL=300 MAX_RESTARTS=3 DELETE_WHEN_DONE=0
}

tpu_parse() {
  parse_opts "$(tr '\n' ' ' <<<"$TPU_OPTIONS")" "$@"
  need NAME ZONE
}

runtime_version() {  # the TPU VM image for an accelerator type (v4-32, v5litepod-16, ...)
  case $1 in
    v4-*) echo tpu-ubuntu2204-base ;;
    v5litepod-*|v5e-*) echo v2-alpha-tpuv5-lite ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v6e-*) echo v2-alpha-tpuv6e ;;
    *) die "no default runtime version for $1: pass --runtime-version" ;;
  esac
}

location() {  # the --zone/--project flags of every gcloud command
  LOCATION=("--zone=$ZONE")
  if [[ -n $PROJECT ]]; then
    LOCATION+=("--project=$PROJECT")
  fi
}

gcloud_tpu() {  # gcloud_tpu [query] GROUP VERB [FLAGS...]: on the queued resource / node $NAME
  local runner=run
  if [[ $1 == query ]]; then
    runner=query
    shift
  fi
  location
  "$runner" gcloud compute tpus "$1" "$2" "$NAME" "${LOCATION[@]}" "${@:3}"
}

tpu_ssh() {  # tpu_ssh [--bg|--query] WORKER COMMAND [-- SSH_FLAGS...]: a command on workers
  local runner=run
  case $1 in
    --bg) runner=run_bg; shift ;;
    --query) runner=query; shift ;;
  esac
  location
  "$runner" gcloud compute tpus tpu-vm ssh "$NAME" "${LOCATION[@]}" "--worker=$1" "--command=$2" "${@:3}"
}

tpu_scp() {  # tpu_scp LOCAL_FILE REMOTE_PATH: to every worker
  location
  run gcloud compute tpus tpu-vm scp "$1" "$NAME:$2" "${LOCATION[@]}" --worker=all
}

qr_state() {  # ACTIVE, WAITING_FOR_RESOURCES, SUSPENDED, ...; "" if there is none
  gcloud_tpu query queued-resources describe '--format=value(state.state)' 2>/dev/null || true
}

wait_active() {  # polls the queued resource until its slice is ACTIVE
  local state
  note "waiting until $NAME is ACTIVE (state read every 30 s):"
  while true; do
    state=$(qr_state)
    case $state in
      ACTIVE) note "$NAME is ACTIVE"; return ;;
      FAILED|SUSPENDED) die "queued resource $NAME is $state" ;;
    esac
    ((DRY_RUN)) && return
    note "$NAME: ${state:-not found yet}"
    sleep 30
  done
}
