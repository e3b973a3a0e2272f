#!/usr/bin/env bash
# Distributed training with torchrun, one process per GPU (or per CPU worker
# on a machine without CUDA, where the gloo backend is used).
#   bash tools/dist_train.sh CONFIG NPROC [train.py options]
# Several nodes: run the same command on every node with
#   NNODES=<nodes> NODE_RANK=<0..NNODES-1> MASTER_ADDR=<node 0's address> \
#   [PORT=29500] bash tools/dist_train.sh ...
# The interpreter: $PYTHON if set, else the first `python` (or `python3`) on
# PATH. Outside an activated virtual environment, point it at the one that
# has torch and the OpenMMLab packages, e.g.
#   PYTHON=/path/to/venv/bin/python bash tools/dist_train.sh ...
# tools/dist_test.sh runs this script with TOOL=test.py.
set -e
TOOL=${TOOL:-train.py}
NAME=${NAME:-dist_train.sh}
if [ $# -lt 2 ]; then
    echo "usage: bash tools/dist_train.sh CONFIG NPROC [train.py options]" >&2
    exit 2
fi
CONFIG=$1
NPROC=$2
shift 2
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-"127.0.0.1"}
TOOLS_DIR=$(cd "$(dirname "$0")" && pwd)
PYTHON=${PYTHON:-$(command -v python || command -v python3 || true)}
if [ -z "$PYTHON" ]; then
    echo "$NAME: error: no python on PATH; set PYTHON=/path/to/python" >&2
    exit 2
fi

PYTHONPATH="$TOOLS_DIR/..":$PYTHONPATH \
"$PYTHON" -m torch.distributed.run \
    --nnodes="$NNODES" \
    --node_rank="$NODE_RANK" \
    --master_addr="$MASTER_ADDR" \
    --master_port="$PORT" \
    --nproc_per_node="$NPROC" \
    "$TOOLS_DIR/$TOOL" "$CONFIG" --launcher pytorch "$@"
