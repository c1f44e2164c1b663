"""Hugging Face <-> Megatron checkpoint conversion, the same code as `rlad convert`:

    python tools/convert_checkpoint.py import --hf-model DIR --megatron-path DIR [--dtype bf16]
    python tools/convert_checkpoint.py export --megatron-path DIR --hf-path OUT [--dtype bf16]
    python tools/convert_checkpoint.py inspect DIR
    torchrun --nproc-per-node 2 tools/convert_checkpoint.py import ... --tp 2

See docs/conversion.md.
"""

import sys

from rlad_megatron.cli import main

if __name__ == "__main__":
    sys.exit(main(["convert", *sys.argv[1:]]))
