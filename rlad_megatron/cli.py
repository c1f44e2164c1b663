"""`rlad`: the command-line entry point. Each subcommand parses its arguments and calls one
function of the package; nothing runs at import.

  rlad info        versions, devices, and whether the CPU shims are active
"""

from __future__ import annotations

import argparse
import sys


def _info(args) -> int:
    import torch

    from rlad_megatron import __version__
    from rlad_megatron.runtime import cpu_shims, mcore_compat

    print(f"rlad_megatron {__version__}")
    print(f"torch {torch.__version__}, megatron-core {mcore_compat.mcore_version()}")
    print(f"CUDA available: {torch.cuda.is_available()}; transformer-engine: "
          f"{mcore_compat.have_transformer_engine()}; CPU shims: "
          f"{'on' if cpu_shims.needed() else 'off'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlad", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, devices, CPU shims").set_defaults(func=_info)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
