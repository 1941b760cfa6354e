#!/usr/bin/env bash
# Install the code on every worker of the slice: the source (this checkout's
# committed HEAD, copied; or a git clone with --repo URL [--ref REF]), then
# launch/tpu/worker_setup.sh on each worker (Python 3.11 venv, `pip install -e .`,
# jax[tpu], and the bucket mounted at /mnt/gcs with --bucket).
#
#   launch/tpu/install.sh --name matpac --zone us-central2-b --project MY_PROJECT \
#       --bucket MY_BUCKET [--repo https://github.com/ORG/matpac_jax.git --ref main] [--dry-run]
#
# Safe to re-run (after a code change: commit, then install again).
set -euo pipefail
# shellcheck source=launch/tpu/tpu.sh
source "$(dirname "$0")/tpu.sh"
tpu_parse "$@"

if [[ -n $REPO ]]; then
  repo=$(shell_quote "$REPO")
  ref=$(shell_quote "$REF")
  tpu_ssh all "{ [ -d matpac_jax/.git ] || { rm -rf matpac_jax && git clone $repo matpac_jax; }; } \
&& git -C matpac_jax fetch origin $ref && git -C matpac_jax checkout --force FETCH_HEAD"
else
  tarball=/tmp/matpac_jax-$NAME.tar.gz
  run git -C "$ROOT" archive --format=tar.gz -o "$tarball" HEAD
  tpu_scp "$tarball" matpac_jax.tar.gz
  tpu_ssh all "mkdir -p matpac_jax && tar -xzf matpac_jax.tar.gz -C matpac_jax"
fi
setup=(bash matpac_jax/launch/tpu/worker_setup.sh)
if [[ -n $BUCKET ]]; then
  setup+=(--bucket "$BUCKET")
fi
tpu_ssh all "$(shell_quote "${setup[@]}")"
