#!/usr/bin/env bash
# Distributed testing with torchrun, one process per GPU (or per CPU worker
# on a machine without CUDA, where the gloo backend is used).
#   bash tools/dist_test.sh CONFIG CHECKPOINT NPROC [test.py options]
# Several nodes, the port and the interpreter ($PYTHON): as for
# tools/dist_train.sh, which this script runs for tools/test.py.
set -e
if [ $# -lt 3 ]; then
    echo "usage: bash tools/dist_test.sh CONFIG CHECKPOINT NPROC [test.py options]" >&2
    exit 2
fi
CONFIG=$1
CHECKPOINT=$2
NPROC=$3
shift 3
TOOL=test.py NAME=dist_test.sh exec bash "$(dirname "$0")/dist_train.sh" \
    "$CONFIG" "$NPROC" "$CHECKPOINT" "$@"
