#!/usr/bin/env bash
# Every accelerator training-step measurement of docs/BENCHMARKS.md in one run
# of under 8 minutes on one H100/H200: MATPAC, M2D (ViT-B) and BEATs iter1 at one
# per-device batch, across attention (xla | cudnn), compute dtype (bfloat16 |
# float32), remat (none | dots) and activations (float32 | bfloat16), then
# the plan of the first PLAN_COUNT (4) runs for this GPU, and a table of
# measured step time and MFU beside the plan's roofline step and MFU cap
# (benchmarks/device_suite.sh, benchmarks/suite_table.py).
#
#   benchmarks/gpu_suite.sh [OUT_DIR] [PER_DEVICE_BATCH] [--config.KEY=VALUE ...]
#   RUNS="matpac_as2m:bfloat16:cudnn:none" benchmarks/gpu_suite.sh   # a subset
#
# MFU = XLA's FLOPs / step time / (dense bf16 peak x devices), peaks in
# matpac_jax/training/metrics.py; float32 rows use the same (bf16) peak.
OUT=${1:-bench_out}
PDB=${2:-256}
shift $(($# < 2 ? $# : 2))
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.95}
# config:dtype:attention:remat[:activation_dtype], most informative first.
export RUNS=${RUNS:-"
matpac_as2m:bfloat16:cudnn:none
matpac_as2m:bfloat16:xla:none
beats_iter1_as2m:bfloat16:cudnn:none
m2d_as2m:bfloat16:cudnn:none
matpac_as2m:bfloat16:cudnn:none:bfloat16
beats_iter1_as2m:bfloat16:xla:none
matpac_as2m:bfloat16:cudnn:dots
beats_iter1_as2m:bfloat16:cudnn:dots
m2d_as2m:bfloat16:xla:none
matpac_as2m:float32:xla:none
matpac_as2m:bfloat16:xla:dots
beats_iter1_as2m:float32:xla:none
"}
exec "$(dirname "$0")/device_suite.sh" "$OUT" "$PDB" "$@"
