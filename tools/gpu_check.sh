#!/bin/bash
# gpu_check.sh: the checks CI cannot run on CPU, on one GPU, in at most 8 minutes
# (transformer-engine vs local layer spec, bf16, streamed vs resident teacher, rollout speed).
#   tools/gpu_check.sh [OUT_DIR]        default bench/results/gpu; see tools/gpu_check.py
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
PYTHON=${PYTHON:-python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8} PYTHONWARNINGS=ignore
exec timeout 480 "$PYTHON" "$HERE/gpu_check.py" --out "${1:-$HERE/../bench/results/gpu}"
