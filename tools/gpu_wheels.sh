#!/bin/bash
# gpu_wheels.sh: the wheels tools/gpu_check.sh installs on a GPU machine whose Python (3.12, torch
# preinstalled) lacks this project's own dependencies; run it where pip reaches an index.
#   tools/gpu_wheels.sh [DIR]          default .whl in the repository root (git-ignored here)
# The GPU image has numpy, sentencepiece, psutil, pyyaml, tqdm, tensorboard and matplotlib; it
# lacks megatron-core and omegaconf (and omegaconf's antlr4 runtime). transformer-engine is not
# carried (a CUDA build): gpu_check runs its layer spec only where it imports.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
DIR=${1:-$HERE/../.whl}
PYTHON=${PYTHON:-python3}
mkdir -p "$DIR"
EXCLUDE="$HERE/../.git/info/exclude"
if [ -f "$EXCLUDE" ] && ! grep -qx "/.whl/" "$EXCLUDE"; then echo "/.whl/" >> "$EXCLUDE"; fi
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$DIR" \
    megatron-core==0.16.1 omegaconf==2.4.0 antlr4-python3-runtime==4.13.2 einops==0.8.2
ls -la "$DIR"
