#!/bin/bash
# trl_env.sh: TRL in its own virtual environment, .venv-trl, for bench/vs_trl.py only.
# TRL 1.x needs transformers 5; the project's `hf` extra pins transformers < 5, so TRL never
# joins .venv or the default set-up. torch==2.13.0 first, so pip keeps the CPU build.
#   tools/trl_env.sh            (idempotent; `make bench-vs-trl` runs it)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=.venv-trl
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import trl" 2>/dev/null; then
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/pip" install -q torch==2.13.0
    # the versions bench/results/vs_trl.json was measured with
    "$VENV/bin/pip" install -q trl==1.16.0 transformers==5.25.0 accelerate==1.16.0 \
        datasets==5.2.0 safetensors==0.8.0
fi
"$VENV/bin/python" -c "import trl, transformers; print('trl', trl.__version__, 'transformers', transformers.__version__)"
