#!/usr/bin/env bash
# Prepare training shards on the slice's workers: worker i runs
#   python -m matpac_jax.data.prepare --input INPUT --output OUTPUT --frontend FRONTEND \
#       --workers $(nproc) --worker_index i --num_workers N
# (all in parallel, over ssh), then worker 0 merges the manifests (--merge).
# INPUT and OUTPUT are gs:// paths (or paths on the workers): INPUT any form
# prepare reads (audio folder or CSV, parquet shards, WebDataset tars; several
# comma-separated). Re-running resumes: finished shards are kept.
#
#   launch/tpu/prepare_data.sh --name matpac --zone us-central2-b --project MY_PROJECT \
#       --input gs://MY_BUCKET/AudioSet/data/bal_train,gs://MY_BUCKET/AudioSet/data/unbal_train \
#       --output gs://MY_BUCKET/as2m_matpac [--frontend matpac] [--labels CSV,CSV] \
#       [--classes class_labels_indices.csv] [--num-shards S] [--num-workers N] [--dry-run]
#
# N is the slice's worker count (asked from gcloud; --dry-run needs --num-workers).
set -euo pipefail
# shellcheck source=launch/tpu/tpu.sh
source "$(dirname "$0")/tpu.sh"
tpu_parse "$@"
need INPUT OUTPUT

n=$NUM_WORKERS
if [[ -z $n ]]; then
  ((!DRY_RUN)) || die "--dry-run needs --num-workers (it asks gcloud nothing)"
  n=$(gcloud_tpu query tpu-vm describe '--format=value(networkEndpoints.len())')
fi
[[ $n =~ ^[1-9][0-9]*$ ]] || die "bad worker count '$n'"

venv="cd matpac_jax && source ../matpac_venv/bin/activate &&"
prepare=(python -m matpac_jax.data.prepare --input "$INPUT" --output "$OUTPUT" --frontend "$FRONTEND")
if [[ -n $NUM_SHARDS ]]; then
  prepare+=(--num_shards "$NUM_SHARDS")
fi
if [[ -n $LABELS ]]; then
  prepare+=(--labels "$LABELS")
fi
if [[ -n $CLASSES ]]; then
  prepare+=(--classes "$CLASSES")
fi
for ((i = 0; i < n; i++)); do
  tpu_ssh --bg "$i" "$venv $(shell_quote "${prepare[@]}") --workers \$(nproc) --worker_index $i --num_workers $n"
done
wait_all
tpu_ssh 0 "$venv $(shell_quote python -m matpac_jax.data.prepare --output "$OUTPUT" --merge)"
