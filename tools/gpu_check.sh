#!/bin/bash
# gpu_check.sh: the checks CI cannot run on CPU, on one GPU, in at most ~9 minutes
# (transformer-engine vs local layer spec, bf16, streamed vs resident teacher, rollout speed,
# a whole `rlad train` RLAD run: rollout tokens/s and seconds per phase).
#   tools/gpu_check.sh [OUT_DIR] [--only rl]     default bench/results/gpu; see tools/gpu_check.py
# Python packages: where megatron-core or omegaconf do not import (the GPU machines here have
# torch on Python 3.12 and neither), the wheels in $WHEELS (default .whl in the repository root,
# made by tools/gpu_wheels.sh) are installed into /tmp/rlad_site first, with no index needed.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
PYTHON=${PYTHON:-python3}
WHEELS=${WHEELS:-$HERE/../.whl}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8} PYTHONWARNINGS=ignore PYTHONUNBUFFERED=1
if ! "$PYTHON" -c "import megatron.core, omegaconf" 2>/dev/null; then
    if ! ls "$WHEELS"/*.whl >/dev/null 2>&1; then
        echo "gpu_check: megatron-core/omegaconf do not import and $WHEELS holds no wheels" \
             "(run tools/gpu_wheels.sh where pip reaches an index)" >&2
        exit 2
    fi
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/rlad_site "$WHEELS"/*.whl
    export PYTHONPATH=/tmp/rlad_site${PYTHONPATH:+:$PYTHONPATH}
fi
OUT=${1:-$HERE/../bench/results/gpu}
shift || true
exec timeout "${GPU_CHECK_TIMEOUT:-560}" "$PYTHON" "$HERE/gpu_check.py" --out "$OUT" "$@"
