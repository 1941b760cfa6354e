#!/usr/bin/env bash
# Create a TPU VM slice through a queued resource and wait until it is ACTIVE.
#
#   launch/tpu/create.sh --name matpac --zone us-central2-b --project MY_PROJECT \
#       --accelerator v4-32 [--spot] [--runtime-version VERSION] [--dry-run]
#
# The runtime version follows the generation unless given: v4 tpu-ubuntu2204-base,
# v5e (v5litepod-N) v2-alpha-tpuv5-lite, v5p v2-alpha-tpuv5, v6e v2-alpha-tpuv6e.
# --spot: cheaper, can be preempted at any time (see keepalive.sh).
set -euo pipefail
# shellcheck source=launch/tpu/tpu.sh
source "$(dirname "$0")/tpu.sh"
tpu_parse "$@"
need ACCELERATOR

flags=("--node-id=$NAME" "--accelerator-type=$ACCELERATOR"
  "--runtime-version=${RUNTIME_VERSION:-$(runtime_version "$ACCELERATOR")}")
if ((SPOT)); then
  flags+=(--spot)
fi
gcloud_tpu queued-resources create "${flags[@]}"
wait_active
