#!/usr/bin/env bash
# Testing on a Slurm cluster, one task per GPU.
#   [GPUS=8] [GPUS_PER_NODE=8] [CPUS_PER_TASK=5] [SRUN_ARGS=...] \
#   bash tools/slurm_test.sh PARTITION JOB_NAME CONFIG CHECKPOINT [test.py options]
# tools/slurm_train.sh does the work, for tools/test.py.
if [ $# -lt 4 ]; then
    echo "usage: bash tools/slurm_test.sh PARTITION JOB_NAME CONFIG CHECKPOINT [options]" >&2
    exit 2
fi
TOOL=test.py exec bash "$(dirname "$0")/slurm_train.sh" "$@"
