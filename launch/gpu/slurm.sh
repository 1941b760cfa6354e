#!/usr/bin/env bash
# Submit a SLURM job on --nodes nodes with --gpus-per-node GPUs each, running
# one process per GPU (srun starts nodes x gpus-per-node tasks). This is JAX's
# SLURM default: it reads the coordinator, process count and id from the srun
# environment, and task k of a node uses GPU k (SLURM_LOCALID), so nothing is
# passed by hand. Output goes to runs/slurm-<job name>-<job id>.out. Re-submitting
# the same command resumes from the latest checkpoint in --workdir (shared).
# A preempted run (SIGTERM: the trainer saves a checkpoint and exits 75) is
# requeued (`scontrol requeue`, sbatch --requeue) and resumes by itself.
#
#   launch/gpu/slurm.sh --nodes 2 --workdir /shared/runs/matpac --data /shared/as2m_matpac \
#       [--gpus-per-node 8] [--job-name matpac] [--sbatch-flags "--partition=gpu --time=2-00:00:00"] \
#       [--config configs/matpac_as2m.py] [--python python] [--dry-run] [-- --config.KEY=VALUE ...]
set -euo pipefail
# shellcheck source=launch/common.sh
source "$(dirname "$0")/../common.sh"
NODES="" GPUS_PER_NODE=8 JOB_NAME=matpac SBATCH_FLAGS=""
CONFIG=configs/matpac_as2m.py WORKDIR="" DATA="" PYTHON=python
parse_opts "nodes gpus-per-node job-name sbatch-flags config workdir data python" "$@"
need NODES WORKDIR

main_command "$PYTHON"
read -r -a extra <<<"$SBATCH_FLAGS"
run mkdir -p "$ROOT/runs"
# srun's status is the highest of its tasks': 75 when they stopped on a preemption.
wrap="srun $(shell_quote "${MAIN[@]}"); rc=\$?; if [ \$rc -eq 75 ]; then scontrol requeue \$SLURM_JOB_ID; fi; exit \$rc"
run sbatch "--job-name=$JOB_NAME" "--nodes=$NODES" "--ntasks-per-node=$GPUS_PER_NODE" \
  "--gpus-per-node=$GPUS_PER_NODE" "--chdir=$ROOT" --output=runs/slurm-%x-%j.out --requeue \
  --open-mode=append "${extra[@]}" "--wrap=$wrap"
