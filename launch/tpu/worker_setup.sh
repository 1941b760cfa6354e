#!/usr/bin/env bash
# Runs on each TPU worker (install.sh starts it): a Python 3.11 virtual
# environment in ~/matpac_venv with this package (editable) and jax[tpu], and,
# with --bucket, the bucket mounted read-write at /mnt/gcs (Cloud Storage FUSE).
#
#   bash matpac_jax/launch/tpu/worker_setup.sh [--bucket MY_BUCKET] [--dry-run]
#
# The TPU images ship Python 3.10; uv fetches 3.11. Safe to re-run.
set -euo pipefail
# shellcheck source=launch/common.sh
source "$(dirname "$0")/../common.sh"
BUCKET=""
parse_opts "bucket" "$@"

venv=$HOME/matpac_venv
mount=/mnt/gcs
run python3 -m pip install --user --quiet --upgrade uv
if [[ ! -x $venv/bin/python ]]; then
  run python3 -m uv venv --python 3.11 "$venv"
fi
run python3 -m uv pip install --python "$venv/bin/python" -e "$ROOT" 'jax[tpu]' tensorboard

if [[ -n $BUCKET ]]; then
  if ! command -v gcsfuse >/dev/null; then
    keyring=/usr/share/keyrings/cloud.google.asc
    codename=$(. /etc/os-release && echo "$VERSION_CODENAME")
    run sudo curl -fsSL -o "$keyring" https://packages.cloud.google.com/apt/doc/apt-key.gpg
    run sudo bash -c "echo 'deb [signed-by=$keyring] https://packages.cloud.google.com/apt \
gcsfuse-$codename main' > /etc/apt/sources.list.d/gcsfuse.list"
    run sudo apt-get update -q
    run sudo apt-get install -y -q gcsfuse
  fi
  if ! mountpoint -q "$mount"; then
    run sudo mkdir -p "$mount"
    run sudo chown "$(id -un)" "$mount"
    run gcsfuse --implicit-dirs "$BUCKET" "$mount"
  fi
fi
