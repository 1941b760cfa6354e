#!/usr/bin/env bash
# Train on several GPU hosts without SLURM: one process per host, each driving
# all of its GPUs, joined through process 0's coordinator (the first host):
#   python -m matpac_jax.main ... --coordinator_address=HOST0:PORT \
#       --num_processes=N --process_id=I
# Either run it on every host yourself with --process-id I (e.g. in tmux), or
# leave --process-id out and it starts all of them over ssh (ssh -tt, so Ctrl-C
# here stops them all). The hosts need the same code, Python environment and
# data paths (--dir, --python), a shared --workdir (NFS or gs://), and HOST0:PORT
# reachable from the others.
#
#   launch/gpu/multi_host.sh --hosts gpu0,gpu1 --workdir /shared/runs/matpac \
#       --data /shared/as2m_matpac [--port 12355] [--process-id I] [--dir REPO_ON_HOSTS] \
#       [--config configs/matpac_as2m.py] [--python python] [--dry-run] [-- --config.KEY=VALUE ...]
set -euo pipefail
# shellcheck source=launch/common.sh
source "$(dirname "$0")/../common.sh"
HOSTS="" PORT=12355 PROCESS_ID="" DIR=$ROOT
CONFIG=configs/matpac_as2m.py WORKDIR="" DATA="" PYTHON=python
parse_opts "hosts port process-id dir config workdir data python" "$@"
need HOSTS WORKDIR

IFS=, read -r -a hosts <<<"$HOSTS"
n=${#hosts[@]}
main_command "$PYTHON"
cluster=("--coordinator_address=${hosts[0]}:$PORT" "--num_processes=$n")

if [[ -n $PROCESS_ID ]]; then
  ((PROCESS_ID >= 0 && PROCESS_ID < n)) || die "--process-id must be in [0, $n)"
  run cd "$DIR"
  run "${MAIN[@]}" "${cluster[@]}" "--process_id=$PROCESS_ID"
else
  for ((i = 0; i < n; i++)); do
    run_bg ssh -tt "${hosts[i]}" \
      "cd $(shell_quote "$DIR") && $(shell_quote "${MAIN[@]}" "${cluster[@]}" "--process_id=$i")"
  done
  wait_all
fi
