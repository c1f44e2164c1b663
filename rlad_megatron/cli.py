"""`rlad`: the command-line entry point. Each subcommand parses its arguments and calls one
function of the package; nothing runs at import.

  rlad train CONFIG.yaml [key=value ...]   RLAD (or grpo / kdrl / sft_distill) training
  rlad sft CONFIG.yaml [key=value ...]     supervised training on gold solutions (algorithm=sft)
  rlad demo RECIPE.yaml [STAGE.key=value]  tokenizer -> teacher SFT -> student SFT -> RL
  rlad plan --config CONFIG.yaml --nodes N --gpus-per-node G [key=value ...]
  rlad plan --teacher T --student S --nodes N --gpus-per-node G   layouts that fit, by headroom
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
    warnings.filterwarnings("ignore", category=FutureWarning)
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


def _demo(args) -> int:
    import logging
    import warnings

    warnings.filterwarnings("ignore", message=".*(Transformer Engine|Apex).*")
    warnings.filterwarnings("ignore", category=FutureWarning)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from rlad_megatron.runtime import print0
    from rlad_megatron.train.recipe import run_recipe

    try:
        out = run_recipe(args.config, list(args.overrides))
    except (ValueError, FileNotFoundError) as e:
        print(f"rlad: error: {e}", file=sys.stderr)
        return 2
    rl = out["rl"]
    before, after = rl.get("before", {}), rl.get("after", {})
    print0("\n=== rlad demo: held-out accuracy (greedy, "
           f"{int(before.get('eval/num_prompts', 0))} prompts) ===")
    print0(f"  teacher                 {before.get('eval/teacher_accuracy', float('nan')):.1%}")
    print0(f"  student before RL       {before.get('eval/accuracy', float('nan')):.1%}")
    print0(f"  student after {rl['last_step']:>3} steps {after.get('eval/accuracy', float('nan')):.1%}")
    if rl.get("plot"):
        print0(f"  curves: {rl['plot']}")
    return 0


def _plan(args) -> int:
    import json

    from rlad_megatron.launch.plan import build_request, format_plan, plan, plan_to_dict

    try:
        request = build_request(
            nodes=args.nodes, gpus_per_node=args.gpus_per_node, gpu_memory_gib=args.gpu_memory,
            config=args.config, overrides=args.overrides, teacher=args.teacher,
            student=args.student, tp=args.tp, pp=args.pp, prompt_len=args.prompt_len,
            response_len=args.response_len, micro_batch_size=args.micro_batch_size,
            prompts_per_step=args.prompts_per_step, group_size=args.group_size,
            rollout_micro_batch=args.rollout_batch, student_dtype=args.dtype,
            teacher_dtype=args.dtype, distributed_optimizer=args.distributed_optimizer,
            recompute=args.recompute or None, reserve_gib=args.reserve)
        result = plan(request)
    except (ValueError, FileNotFoundError) as e:
        print(f"rlad plan: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(plan_to_dict(result), indent=2) if args.json else format_plan(result))
    return 0 if result.ok else 2


def _add_plan_parser(sub) -> None:
    p = sub.add_parser("plan", help="per-GPU memory of each TP x PP x DP layout; refuses what "
                                    "does not fit (exit status 2)")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides of --config")
    p.add_argument("--config", help="run config (YAML): models, sequence and batch sizes, layout")
    p.add_argument("--teacher", help="preset, HF directory / config.json, or Megatron checkpoint")
    p.add_argument("--student", help="preset, HF directory / config.json, or Megatron checkpoint")
    p.add_argument("--nodes", type=int, required=True)
    p.add_argument("--gpus-per-node", type=int, required=True)
    p.add_argument("--gpu-memory", type=float, default=80.0, help="GiB per GPU (default 80)")
    p.add_argument("--tp", type=int, help="check this tensor-parallel size only")
    p.add_argument("--pp", type=int, help="check this pipeline-parallel size only")
    p.add_argument("--prompt-len", type=int, help="prompt tokens (default 1024)")
    p.add_argument("--response-len", type=int, help="response tokens (default: "
                   "rollout.max_new_tokens, else 1024)")
    p.add_argument("--micro-batch-size", type=int, help="training micro-batch (sequences)")
    p.add_argument("--prompts-per-step", type=int)
    p.add_argument("--group-size", type=int)
    p.add_argument("--rollout-batch", type=int, help="sequences generated together per GPU "
                   "(KV cache); 0 = all of a GPU's")
    p.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), help="both models (default bf16)")
    p.add_argument("--distributed-optimizer", action=argparse.BooleanOptionalAction,
                   default=None, help="shard the optimizer state over DP (default on)")
    p.add_argument("--recompute", action="store_true", help="count full activation recompute")
    p.add_argument("--reserve", type=float, help="GiB kept for CUDA context, NCCL, fragmentation "
                   "(default 4)")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.set_defaults(func=_plan)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlad", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, devices, CPU shims").set_defaults(func=_info)
    from rlad_megatron.convert import commands as convert_commands

    convert_commands.add_convert_parser(sub)
    convert_commands.add_logprobs_parser(sub)
    for name, algorithm, text in (("train", None, "train with the configured algorithm"),
                                  ("sft", "sft", "supervised training on gold solutions")):
        p = sub.add_parser(name, help=text)
        p.add_argument("config", help="YAML run config (train/config.py RunConfig)")
        p.add_argument("overrides", nargs="*", help="dotted key=value overrides")
        p.set_defaults(func=lambda a, alg=algorithm: _train(a, alg))
    _add_plan_parser(sub)
    p = sub.add_parser("demo", help="tokenizer, teacher SFT, student SFT, then RL (cached)")
    p.add_argument("config", help="recipe YAML (train/recipe.py), e.g. examples/configs/demo.yaml")
    p.add_argument("overrides", nargs="*", help="STAGE.key=value overrides")
    p.set_defaults(func=_demo)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
