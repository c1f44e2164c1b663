"""Arguments of `rlad convert import|export|inspect` and `rlad logprobs` (wired into
rlad_megatron/cli.py and tools/convert_checkpoint.py); each handler calls one function.

  rlad convert import  --hf-model DIR --megatron-path DIR [--tp N] [--pp N] [--dtype fp32|bf16|fp16]
  rlad convert export  --megatron-path DIR --hf-path OUT [--dtype ...] [--max-shard-size 5GB]
                       [--hf-reference HF_DIR]
  rlad convert inspect DIR
  rlad logprobs        --megatron-path DIR [--tokenizer PATH] --text "..." [--json] [--tp N --pp N]

import/logprobs at --tp/--pp > 1 run under torchrun (torchrun --nproc-per-node N -m
rlad_megatron.cli ...); export splits its output files over the ranks when run under torchrun.
User errors (bad paths, unsupported configs, layouts) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import sys

DTYPE_CHOICES = ("fp32", "bf16", "fp16")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """'5GB' -> 5e9 bytes, '500MiB' -> 500 * 2**20, '1000' -> 1000 (Hugging Face's convention)."""
    m = _SIZE.match(str(text))
    if not m:
        raise ValueError(f"--max-shard-size {text!r}: expected e.g. 5GB, 500MiB or a byte count")
    unit = (m.group(2) or "B").upper()
    power = "BKMGT".index(unit[0])
    base = 1024 if unit.endswith("IB") else 1000
    return int(float(m.group(1)) * base ** power)


def _user_errors(fn):
    @functools.wraps(fn)
    def run(args) -> int:
        try:
            return fn(args)
        except (ValueError, FileNotFoundError, FileExistsError, KeyError) as e:
            message = e.args[0] if isinstance(e, KeyError) and e.args else e
            print(f"rlad {args.command}: error: {message}", file=sys.stderr)
            return 2
    return run


@_user_errors
def run_import(args) -> int:
    from rlad_megatron.convert.hf_to_megatron import import_hf
    from rlad_megatron.runtime import print0

    folder = import_hf(args.hf_model, args.megatron_path, tp=args.tp, pp=args.pp,
                       dtype=args.dtype)
    print0(f"wrote {folder}")
    return 0


@_user_errors
def run_export(args) -> int:
    from rlad_megatron.convert.megatron_to_hf import export_hf
    from rlad_megatron.runtime import init_distributed, print0
    from rlad_megatron.runtime.distributed import detect_launcher

    if detect_launcher()[0] != "single":  # torchrun/srun: spread the files over the ranks
        init_distributed()
    out = export_hf(args.megatron_path, args.hf_path, dtype=args.dtype,
                    max_shard_bytes=parse_size(args.max_shard_size), iteration=args.iteration,
                    hf_reference=args.hf_reference)
    print0(f"wrote {out}")
    return 0


@_user_errors
def run_inspect(args) -> int:
    from rlad_megatron.convert.inspect_ckpt import inspect_checkpoint

    print(inspect_checkpoint(args.path))
    return 0


@_user_errors
def run_logprobs(args) -> int:
    from rlad_megatron.convert.score import checkpoint_logprobs, format_rows
    from rlad_megatron.runtime import print0

    rows = checkpoint_logprobs(args.megatron_path, args.text, tokenizer=args.tokenizer,
                               tp=args.tp, pp=args.pp, add_bos=args.add_bos,
                               on_bos=lambda m: print0(f"rlad logprobs: {m}", file=sys.stderr))
    if rows is not None:
        print0(json.dumps(rows, ensure_ascii=False) if args.json else format_rows(rows))
    return 0


def add_convert_parser(sub) -> None:
    convert = sub.add_parser("convert", help="Hugging Face <-> Megatron checkpoints")
    csub = convert.add_subparsers(dest="convert_command", required=True)
    p = csub.add_parser("import", help="HF directory -> Megatron torch_dist checkpoint")
    p.add_argument("--hf-model", required=True, help="HF directory (config.json, *.safetensors)")
    p.add_argument("--megatron-path", required=True, help="checkpoint root to write")
    p.add_argument("--tp", type=int, default=1, help="tensor parallel size (torchrun ranks)")
    p.add_argument("--pp", type=int, default=1, help="pipeline parallel size (torchrun ranks)")
    p.add_argument("--dtype", choices=DTYPE_CHOICES, default=None,
                   help="stored dtype (default: the HF config's dtype, else fp32)")
    p.set_defaults(func=run_import)
    p = csub.add_parser("export", help="Megatron checkpoint -> HF directory")
    p.add_argument("--megatron-path", required=True, help="checkpoint root or iter_XXXXXXX folder")
    p.add_argument("--hf-path", required=True, help="output directory (new or empty)")
    p.add_argument("--dtype", choices=DTYPE_CHOICES, default=None,
                   help="output dtype (default: the checkpoint's)")
    p.add_argument("--max-shard-size", default="5GB", help="per safetensors file (e.g. 5GB)")
    p.add_argument("--iteration", type=int, default=None, help="default: the latest")
    p.add_argument("--hf-reference", default=None,
                   help="HF directory whose tokenizer, config.json and generation_config.json to "
                        "use (for trainer checkpoints, which record none)")
    p.set_defaults(func=run_export)
    p = csub.add_parser("inspect", help="spec and tensor shapes of a checkpoint")
    p.add_argument("path", help="Megatron root, iter_XXXXXXX folder, or HF directory")
    p.set_defaults(func=run_inspect)


def add_logprobs_parser(sub) -> None:
    p = sub.add_parser("logprobs", help="per-token log-probs of a text under a checkpoint")
    p.add_argument("--megatron-path", required=True, help="checkpoint root or iter folder")
    p.add_argument("--tokenizer", default=None,
                   help="default: the tokenizer recorded in the checkpoint")
    p.add_argument("--text", required=True)
    p.add_argument("--json", action="store_true",
                   help='print [{"token_id", "token", "logprob"}, ...]')
    p.add_argument("--add-bos", action=argparse.BooleanOptionalAction, default=None,
                   help="prepend the tokenizer's bos token (default: as the tokenizer's own "
                   "encoding does; the choice is printed on stderr)")
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--pp", type=int, default=1)
    p.set_defaults(func=run_logprobs)
