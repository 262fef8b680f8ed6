#!/usr/bin/env bash
# Training on a Cloud TPU VM pod slice: the same command on every worker.
#
#   TPU_NAME=dssl-v4-32 ZONE=us-central2-b launch/tpu_pod.sh configs/cuhk.py /mnt/bucket/runs/cuhk \
#       --config.data.manual_dir=/mnt/bucket/CUHK-PEDES --config.data.data_dir=/mnt/bucket/tfds
#
# The repository (with its venv) must already be at REPO on every worker (default ~/dssl_jax).
# jax.distributed.initialize() discovers the pod by itself; each host reads its shard of the data;
# checkpoints and logs go to the shared WORKDIR. Paths are local ones: mount the bucket on every
# worker first (gcsfuse --implicit-dirs BUCKET /mnt/bucket); a gs:// path is refused in one line.
# DRY_RUN=1 prints the command instead of running it.
set -euo pipefail
if [ $# -lt 2 ] || [ -z "${TPU_NAME:-}" ] || [ -z "${ZONE:-}" ]; then
  echo "usage: TPU_NAME=... ZONE=... [PROJECT=...] [REPO=~/dssl_jax] $0 CONFIG WORKDIR [--config.x=y ...]" >&2
  exit 2
fi
config=$1 workdir=$2
shift 2
remote="cd ${REPO:-~/dssl_jax} && . .venv/bin/activate && python -m dssl_jax.main"
remote+=" --config=$(printf %q "$config") --workdir=$(printf %q "$workdir")"
remote+=" --config.train.distributed=True"
for arg in "$@"; do remote+=" $(printf %q "$arg")"; done
cmd=(gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command="$remote")
if [ -n "${PROJECT:-}" ]; then cmd+=(--project="$PROJECT"); fi
if [ "${DRY_RUN:-0}" = 1 ]; then
  printf '%q ' "${cmd[@]}"; echo
else
  "${cmd[@]}"
fi
