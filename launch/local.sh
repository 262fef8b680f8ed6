#!/usr/bin/env bash
# N processes of one run on this machine, wired as N hosts would be: to try multi-host training
# (and its resume, logs and results) before a cluster. On CPU the processes talk over gloo.
#
#   launch/local.sh 2 configs/synthetic_tiny.py /tmp/dssl_2proc [--config.x=y ...]
#
# jax.distributed.initialize() reads SLURM's variables, set here as `srun -n N` would set them on
# one node (the job id only picks the coordinator's port). Only process 0 prints progress and
# writes logs; the exit code is 1 if any process failed.
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: $0 N CONFIG WORKDIR [--config.x=y ...]" >&2
  exit 2
fi
n=$1 config=$2 workdir=$3
shift 3
job=${SLURM_JOB_ID:-$((RANDOM % 4096))}
pids=()
for ((i = 0; i < n; i++)); do
  SLURM_JOB_ID=$job SLURM_STEP_NODELIST=localhost SLURM_NTASKS=$n SLURM_PROCID=$i \
  SLURM_LOCALID=$i python -m dssl_jax.main --config="$config" --workdir="$workdir" \
      --config.train.distributed=True "$@" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do
  wait "$pid" || status=1
done
exit $status
