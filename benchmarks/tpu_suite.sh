#!/usr/bin/env bash
# The TPU counterpart of benchmarks/gpu_suite.sh, for the first TPU VM a run
# gets (one host: v5e-8 / v6e-8 / v5p-8 / v4-8): MATPAC, M2D and BEATs iter1
# measured at one per-device batch with the XLA and the Pallas attention and
# float32 or bfloat16 activations, each beside the plan of the same step for
# this slice (roofline step time, MFU cap, bound, model FLOP per HBM byte,
# planned and measured peak memory). Under 8 minutes (SUITE_BUDGET_S,
# RUN_TIMEOUT_S as gpu_suite.sh).
#
#   benchmarks/tpu_suite.sh [OUT_DIR] [PER_DEVICE_BATCH] [--config.KEY=VALUE ...]
#   RUNS="matpac_as2m:bfloat16:pallas:none:bfloat16" benchmarks/tpu_suite.sh   # a subset
#
# PER_DEVICE_BATCH defaults to 128, which fits a v5e chip (16 GB) for every
# method (docs/SCALING.md); use 256 on v5p / v6e for the official per-chip
# batch of MATPAC and M2D.
OUT=${1:-bench_out}
PDB=${2:-128}
shift $(($# < 2 ? $# : 2))
# config:dtype:attention:remat[:activation_dtype], most informative first.
export RUNS=${RUNS:-"
matpac_as2m:bfloat16:pallas:none:bfloat16
matpac_as2m:bfloat16:xla:none
beats_iter1_as2m:bfloat16:pallas:none:bfloat16
m2d_as2m:bfloat16:pallas:none:bfloat16
beats_iter1_as2m:bfloat16:xla:none
m2d_as2m:bfloat16:xla:none
matpac_as2m:bfloat16:pallas:none
matpac_as2m:float32:xla:none
"}
exec "$(dirname "$0")/device_suite.sh" "$OUT" "$PDB" "$@"
