#!/usr/bin/env bash
# Delete the slice and its queued resource (stops billing; the bucket is kept).
#
#   launch/tpu/delete.sh --name matpac --zone us-central2-b --project MY_PROJECT [--dry-run]
set -euo pipefail
# shellcheck source=launch/tpu/tpu.sh
source "$(dirname "$0")/tpu.sh"
tpu_parse "$@"

gcloud_tpu queued-resources delete --force --quiet
