"""`rlad`: the command-line entry point. Each subcommand parses its arguments and calls one
function of the package; nothing runs at import.

  rlad train CONFIG.yaml [key=value ...]   RLAD (or grpo / kdrl / sft_distill) training
  rlad sft CONFIG.yaml [key=value ...]     supervised training on gold solutions (algorithm=sft)
  rlad info                                versions, devices, and whether the CPU shims are active

Under torchrun or srun every rank runs the same command:
  torchrun --nproc-per-node 2 -m rlad_megatron.cli train CONFIG.yaml parallel.tensor=2
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


def _train(args, algorithm=None) -> int:
    import json
    import logging
    import warnings

    warnings.filterwarnings("ignore", message=".*(Transformer Engine|Apex).*")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from rlad_megatron.runtime import print0
    from rlad_megatron.train.config import load_config
    from rlad_megatron.train.loop import train

    overrides = list(args.overrides) + ([f"algorithm={algorithm}"] if algorithm else [])
    try:
        cfg = load_config(args.config, overrides)
    except (ValueError, FileNotFoundError) as e:
        print(f"rlad: config error: {e}", file=sys.stderr)
        return 2
    try:
        summary = train(cfg)
    except (ValueError, FileNotFoundError) as e:
        print(f"rlad: error: {e}", file=sys.stderr)
        return 2
    print0("rlad: done " + json.dumps({k: v for k, v in summary.items()}, default=str))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlad", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, devices, CPU shims").set_defaults(func=_info)
    for name, algorithm, text in (("train", None, "train with the configured algorithm"),
                                  ("sft", "sft", "supervised training on gold solutions")):
        p = sub.add_parser(name, help=text)
        p.add_argument("config", help="YAML run config (train/config.py RunConfig)")
        p.add_argument("overrides", nargs="*", help="dotted key=value overrides")
        p.set_defaults(func=lambda a, alg=algorithm: _train(a, alg))
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
