#!/bin/bash
# submit.sh: check a recipe's layout with `rlad plan`, then sbatch slurm/rlad_train.sbatch.
#
#   slurm/submit.sh RECIPE [key=value ...]          a recipe below, with its default node count
#   slurm/submit.sh CONFIG.yaml [key=value ...]     any run config (NODES defaults to 1)
#
#   recipe               config                                     nodes (x 8 GPUs)
#   qwen3_8b_to_1.7b     examples/configs/qwen3_8b_to_1.7b.yaml     1
#   qwen3_32b_to_8b      examples/configs/qwen3_32b_to_8b.yaml      4
#   llama31_405b_to_8b   examples/configs/llama31_405b_to_8b.yaml   8
#   llama31_405b_to_8b_1node  examples/configs/llama31_405b_to_8b_1node.yaml  1 (teacher streamed
#                        from host memory: set HOST_MEMORY_GIB to check it here too)
#   llama31_405b_to_8b_2node  examples/configs/llama31_405b_to_8b_2node.yaml  2 (teacher TP=8 x
#                        PP=2 on its own layout, student TP=8 x DP=2)
#   llama31_70b_to_8b    examples/configs/llama31_70b_to_8b.yaml    1 (teacher TP=8 on its own
#                        layout, student TP=2 x DP=4)
#
# Refuses to submit (exit 2) when the layout does not divide the models or does not fit the
# GPUs; the job checks again on its first node before it starts (PLAN=0 skips both checks).
# Site settings, from the environment (defaults here); everything else the sbatch script reads
# (CONTAINER_IMAGE, CONTAINER_MOUNTS, CONTAINER_WORKDIR, PYTHON, GPU_MEMORY_GIB, PROMPT_LEN, ...)
# is passed on through the environment.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")

ACCOUNT=${ACCOUNT:-}                 # sbatch --account (empty: the user's default)
PARTITION=${PARTITION:-}             # sbatch --partition (empty: the cluster's default)
GPUS_PER_NODE=${GPUS_PER_NODE:-8}    # one rank per GPU
TIME_LIMIT=${TIME_LIMIT:-04:00:00}
JOB_NAME=${JOB_NAME:-}               # default: the recipe or config name
LOG_DIR=${LOG_DIR:-$PWD/logs}        # the job log: $LOG_DIR/<job name>-<job id>.out
SBATCH_EXTRA=${SBATCH_EXTRA:-}       # more sbatch options, e.g. "--qos=high --constraint=h100"
PYTHON=${PYTHON:-python}
GPU_MEMORY_GIB=${GPU_MEMORY_GIB:-80}
HOST_MEMORY_GIB=${HOST_MEMORY_GIB:-}  # per node, for a streamed teacher (empty: checked in the job)
PROMPT_LEN=${PROMPT_LEN:-1024}
PLAN=${PLAN:-1}

if (( $# < 1 )); then
    sed -n '2,16p' "$0" >&2
    exit 2
fi
case "$1" in
    qwen3_8b_to_1.7b)   CONFIG=$REPO/examples/configs/qwen3_8b_to_1.7b.yaml;   : "${NODES:=1}" ;;
    qwen3_32b_to_8b)    CONFIG=$REPO/examples/configs/qwen3_32b_to_8b.yaml;    : "${NODES:=4}" ;;
    llama31_405b_to_8b) CONFIG=$REPO/examples/configs/llama31_405b_to_8b.yaml; : "${NODES:=8}" ;;
    llama31_405b_to_8b_1node)
                        CONFIG=$REPO/examples/configs/llama31_405b_to_8b_1node.yaml; : "${NODES:=1}" ;;
    llama31_405b_to_8b_2node)
                        CONFIG=$REPO/examples/configs/llama31_405b_to_8b_2node.yaml; : "${NODES:=2}" ;;
    llama31_70b_to_8b)  CONFIG=$REPO/examples/configs/llama31_70b_to_8b.yaml;  : "${NODES:=1}" ;;
    *.yaml|*.yml)       CONFIG=$1;                                             : "${NODES:=1}" ;;
    *) echo "submit.sh: $1 is neither a recipe nor a .yaml config" >&2; exit 2 ;;
esac
shift
JOB_NAME=${JOB_NAME:-$(basename "${CONFIG%.*}")}

if [[ "$PLAN" == 1 ]]; then
    if "$PYTHON" -c "import rlad_megatron" 2>/dev/null; then
        "$PYTHON" -m rlad_megatron.cli plan --config "$CONFIG" --nodes "$NODES" \
            --gpus-per-node "$GPUS_PER_NODE" --gpu-memory "$GPU_MEMORY_GIB" \
            ${HOST_MEMORY_GIB:+--host-memory "$HOST_MEMORY_GIB"} \
            --prompt-len "$PROMPT_LEN" "$@" || { echo "submit.sh: not submitted" >&2; exit 2; }
    else
        echo "submit.sh: rlad_megatron is not importable by $PYTHON here; the job checks the" \
             "layout on its first node instead" >&2
    fi
fi

mkdir -p "$LOG_DIR"
ARGS=(--job-name="$JOB_NAME" --nodes="$NODES" --ntasks-per-node="$GPUS_PER_NODE"
      --gpus-per-node="$GPUS_PER_NODE" --time="$TIME_LIMIT" --output="$LOG_DIR/%x-%j.out")
[[ -n "$ACCOUNT" ]] && ARGS+=(--account="$ACCOUNT")
[[ -n "$PARTITION" ]] && ARGS+=(--partition="$PARTITION")
# shellcheck disable=SC2206
[[ -n "$SBATCH_EXTRA" ]] && ARGS+=($SBATCH_EXTRA)
export PYTHON GPU_MEMORY_GIB HOST_MEMORY_GIB PROMPT_LEN PLAN
sbatch "${ARGS[@]}" "$HERE/rlad_train.sbatch" "$CONFIG" "$@"
