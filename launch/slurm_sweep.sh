#!/usr/bin/env bash
# An ablation table on SLURM: one job per row (a job array), then one job that writes the table.
#
#   launch/slurm_sweep.sh configs/cuhk.py table1 /shared/runs/table1 \
#       --config.data.manual_dir=/shared/CUHK-PEDES --config.data.data_dir=/shared/tfds
#
# Run it on the login node: it submits the array (each row: python -m launch.sweep --variant=K,
# which resumes or skips a finished row) and the table job, after the whole array. Extra sbatch
# options go in SBATCH_ARGS (e.g. "--gpus=1 --time=24:00:00"). DRY_RUN=1 prints the sbatch calls.
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: [SBATCH_ARGS=...] $0 CONFIG TABLE WORKDIR [--config.x=y ...]" >&2
  exit 2
fi
config=$1 table=$2 workdir=$3
shift 3
rows=$(python -c "from launch.sweeps import SWEEPS; print(len(SWEEPS['$table']))")
sweep=(python -m launch.sweep --config="$config" --sweep="$table" --workdir="$workdir" "$@")
row_job=(sbatch --parsable --job-name="dssl-$table" --array=0-$((rows - 1)) ${SBATCH_ARGS:-}
         --wrap="$(printf '%q ' "${sweep[@]}") --variant=\$SLURM_ARRAY_TASK_ID")
if [ "${DRY_RUN:-0}" = 1 ]; then
  printf '%q ' "${row_job[@]}"; echo
  echo sbatch --dependency=afterany:JOB --job-name="dssl-$table-table" \
       --wrap="$(printf '%q ' "${sweep[@]}") --table_only"
  exit 0
fi
job=$("${row_job[@]}")
sbatch --dependency=afterany:"$job" --job-name="dssl-$table-table" \
       --wrap="$(printf '%q ' "${sweep[@]}") --table_only"
echo "submitted $rows rows as job array $job"
