#!/usr/bin/env bash
# Multi-host GPU training on SLURM: one process per node, all GPUs of the node each.
#
#   sbatch --nodes=4 --gpus-per-node=8 launch/slurm_train.sh configs/cuhk.py /shared/runs/cuhk \
#       --config.data.manual_dir=/shared/CUHK-PEDES --config.data.data_dir=/shared/tfds
#
# jax.distributed.initialize() (config.train.distributed=True) finds the coordinator and the
# process ids from SLURM's environment; every process reads its own shard of the data; the workdir
# (checkpoints, logs, results) must be on storage all nodes share. Resubmitting resumes.
# DRY_RUN=1 prints the command instead of running it.
#SBATCH --job-name=dssl
#SBATCH --ntasks-per-node=1
#SBATCH --exclusive
#SBATCH --output=%x-%j.out
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 CONFIG WORKDIR [--config.x=y ...]" >&2
  exit 2
fi
config=$1 workdir=$2
shift 2
cmd=(python -m dssl_jax.main --config="$config" --workdir="$workdir"
     --config.train.distributed=True "$@")
if [ "${DRY_RUN:-0}" = 1 ]; then
  echo srun "${cmd[@]}"
else
  srun "${cmd[@]}"
fi
