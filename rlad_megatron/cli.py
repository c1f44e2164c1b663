"""`rlad`: the command-line entry point. Each subcommand parses its arguments and calls one
function of the package; nothing runs at import.

  rlad train CONFIG.yaml [key=value ...]   RLAD (or grpo / kdrl / sft_distill) training
  rlad sft CONFIG.yaml [key=value ...]     supervised training on gold solutions (algorithm=sft)
  rlad prepare RECIPE.yaml [overrides]     tokenizer -> teacher SFT -> student SFT (cached)
  rlad reproduce RECIPE.yaml [--quick]     every arm x seed from the prepared student; tables
  rlad demo RECIPE.yaml [overrides]        prepare, then GRPO and RLAD side by side
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
    import errno
    import json
    import logging
    import warnings

    warnings.filterwarnings("ignore", message=".*(Transformer Engine|Apex).*")
    warnings.filterwarnings("ignore", category=FutureWarning)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from rlad_megatron.runtime import print0
    from rlad_megatron.config.run import load_config
    from rlad_megatron.train.loop import train

    if args.help_config:
        import textwrap

        from rlad_megatron.data.tasks import task_names
        from rlad_megatron.config.schema import format_schema

        print(format_schema(), end="")
        names = task_names()
        print(f"\ndata.task values (the {len(names)} reasoning-gym tasks installed; with "
              "data.format=chat the reward reads <answer>...</answer> or \\boxed{}):")
        print(textwrap.fill(", ".join(names), 96, initial_indent="  ", subsequent_indent="  "))
        return 0
    if args.config is None:
        print("rlad: a run config YAML is needed (or --help-config)", file=sys.stderr)
        return 2
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
        _release_process_groups()
        return 2
    except OSError as e:  # a full disk (models/checkpoint_files.py disk_full): named, no traceback
        if e.errno != errno.ENOSPC:
            raise
        print(f"rlad: error: {e.strerror}", file=sys.stderr)
        _release_process_groups()
        return 2
    print0("rlad: done " + json.dumps({k: v for k, v in summary.items()}, default=str))
    return 0


def _quiet() -> None:
    import logging
    import warnings

    warnings.filterwarnings("ignore", message=".*(Transformer Engine|Apex).*")
    warnings.filterwarnings("ignore", category=FutureWarning)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def _release_process_groups() -> None:
    """After a refused run: megatron's and torch's process groups are released, so that a caller
    in the same process (a test, a notebook) can start another run."""
    import torch.distributed as dist

    from rlad_megatron.runtime import destroy_parallel

    destroy_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()


def _prepare(args) -> int:
    _quiet()
    from rlad_megatron.reproduce.recipe import prepare

    try:
        prepare(args.config, list(args.overrides))
    except (ValueError, FileNotFoundError) as e:
        print(f"rlad: error: {e}", file=sys.stderr)
        return 2
    return 0


def _reproduce(args, demo: bool = False) -> int:
    _quiet()
    from rlad_megatron.reproduce.runner import reproduce

    try:
        return reproduce(args.config, list(args.overrides), quick=args.quick, demo=demo,
                         jobs=args.jobs)
    except (ValueError, FileNotFoundError) as e:
        print(f"rlad: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM (reproduce/runner.py): its runs were stopped
        print(f"\nrlad {args.command}: interrupted; the training runs stopped with it (each "
              f"checkpoints first). Run the same command again to resume", file=sys.stderr)
        return 130


def _map(args) -> int:
    _quiet()
    from rlad_megatron.reproduce.grid import run_map

    try:
        return run_map(args.config, list(args.overrides), jobs=args.jobs)
    except (ValueError, FileNotFoundError) as e:
        print(f"rlad: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nrlad map: interrupted; run the same command again to resume cell by cell",
              file=sys.stderr)
        return 130


def _plan(args) -> int:
    import json

    from rlad_megatron.launch.plan import build_request, plan
    from rlad_megatron.launch.plan_report import format_plan, plan_to_dict
    from rlad_megatron.launch.step_time import Hardware

    try:
        request = build_request(
            nodes=args.nodes, gpus_per_node=args.gpus_per_node, gpu_memory_gib=args.gpu_memory,
            config=args.config, overrides=args.overrides, teacher=args.teacher,
            student=args.student, tp=args.tp, pp=args.pp, teacher_tp=args.teacher_tp,
            teacher_pp=args.teacher_pp, joint=args.joint, prompt_len=args.prompt_len,
            response_len=args.response_len, micro_batch_size=args.micro_batch_size,
            max_tokens_per_micro_batch=args.max_tokens_per_micro_batch,
            prompts_per_step=args.prompts_per_step, group_size=args.group_size,
            rollout_micro_batch=args.rollout_batch, rollout_engine=args.rollout_engine,
            max_live_rows=args.max_live_rows, kv_block_size=args.kv_block_size,
            student_dtype=args.dtype,
            teacher_dtype=args.dtype, distributed_optimizer=args.distributed_optimizer,
            recompute=args.recompute or None, reserve_gib=args.reserve,
            teacher_offload=args.teacher_offload, stream_window=args.stream_window,
            host_memory_gib=args.host_memory, min_headroom_gib=args.min_headroom,
            hardware=Hardware.from_overrides(args.hw))
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
    p.add_argument("--teacher-tp", type=int, help="the teacher's own tensor-parallel size "
                   "(teacher.parallel.tensor; default: the student's)")
    p.add_argument("--teacher-pp", type=int, help="the teacher's own pipeline-parallel size "
                   "(teacher.parallel.pipeline; default: the student's)")
    p.add_argument("--joint", action="store_true", help="search the teacher's TP x PP "
                   "separately from the student's (teacher.parallel), beside the shared layouts")
    p.add_argument("--prompt-len", type=int, help="prompt tokens (default 1024)")
    p.add_argument("--response-len", type=int, help="response tokens (default: "
                   "rollout.max_new_tokens, else 1024)")
    p.add_argument("--micro-batch-size", type=int, help="training micro-batch (sequences)")
    p.add_argument("--max-tokens-per-micro-batch", type=int,
                   help="training micro-batch token budget (train.max_tokens_per_micro_batch)")
    p.add_argument("--prompts-per-step", type=int)
    p.add_argument("--group-size", type=int)
    p.add_argument("--rollout-batch", type=int, help="sequences generated together per GPU "
                   "(KV cache); 0 = all of a GPU's")
    p.add_argument("--rollout-engine", choices=("static", "continuous"), help="continuous: "
                   "size the KV block pool (rollout.engine; default: the config's, else "
                   "continuous)")
    p.add_argument("--max-live-rows", type=int, help="continuous: rows in flight per GPU "
                   "(0 = --rollout-batch)")
    p.add_argument("--kv-block-size", type=int, help="continuous: tokens per KV block "
                   "(default 256)")
    p.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), help="both models (default bf16)")
    p.add_argument("--distributed-optimizer", action=argparse.BooleanOptionalAction,
                   default=None, help="shard the optimizer state over DP (default on)")
    p.add_argument("--recompute", action="store_true", help="count full activation recompute")
    p.add_argument("--reserve", type=float, help="GiB kept for CUDA context, NCCL, fragmentation "
                   "(default 4)")
    p.add_argument("--teacher-offload", choices=("none", "stream"), help="stream: the teacher's "
                   "layers in host memory, a window on the GPU (default: the config's, else none)")
    p.add_argument("--stream-window", type=int, help="teacher layers on the GPU when streamed "
                   "(default 2)")
    p.add_argument("--host-memory", type=float, help="GiB of host memory per node, checked "
                   "against a streamed teacher's layers")
    p.add_argument("--min-headroom", type=float, default=2.0, help="GiB a recommended layout "
                   "leaves free (default 2)")
    p.add_argument("--hw", action="append", default=[], metavar="KEY=VALUE",
                   help="step-time assumption (launch/step_time.py Hardware: peak_tflops, mfu, "
                   "hbm_gbps, intra_node_gbps, inter_node_gbps, host_to_device_gbps, "
                   "collective_latency_us)")
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
        p.add_argument("config", nargs="?", help="YAML run config (config/run.py RunConfig)")
        p.add_argument("overrides", nargs="*", help="dotted key=value overrides")
        p.add_argument("--help-config", action="store_true",
                       help="print every config field: type, default, allowed values, doc")
        p.set_defaults(func=lambda a, alg=algorithm: _train(a, alg))
    _add_plan_parser(sub)
    p = sub.add_parser("prepare", help="a recipe's cached stages: tokenizer, teacher SFT, "
                                       "student SFT (under torchrun)")
    p.add_argument("config", help="recipe YAML (reproduce/recipe.py)")
    p.add_argument("overrides", nargs="*", help="STAGE.key=value overrides")
    p.set_defaults(func=_prepare)
    for name, demo, text in (
            ("reproduce", False, "the paper's tables in miniature: every arm x seed from one "
                                 "student, results.md / results.json / plots"),
            ("demo", True, "teacher, student, then GRPO and RLAD side by side (cached)")):
        p = sub.add_parser(name, help=text)
        p.add_argument("config", help="recipe YAML, e.g. examples/configs/reproduce.yaml")
        p.add_argument("overrides", nargs="*", help="STAGE.key=value / reproduce.key=value")
        p.add_argument("--quick", action="store_true", help="the recipe's reproduce.quick "
                       "settings: fewer seeds and steps, the same tables")
        p.add_argument("--jobs", type=int, default=None, help="arms trained at once "
                       "(default: reproduce.jobs)")
        p.set_defaults(func=lambda a, d=demo: _reproduce(a, d))
    p = sub.add_parser("map", help="where RLAD beats GRPO: a grid of reproductions (student "
                                   "strength x training), the paired difference per cell")
    p.add_argument("config", help="recipe YAML with a map section (reproduce/grid.py)")
    p.add_argument("overrides", nargs="*", help="STAGE.key=value / reproduce.key=value")
    p.add_argument("--jobs", type=int, default=None, help="arms trained at once in a cell "
                   "(default: reproduce.jobs)")
    p.set_defaults(func=_map)
    return parser


PINNED_CPU_NUMERICS = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2"}
"""CPU kernel paths of every rlad process. Left to themselves, torch picks AVX-512 kernels where
the CPU has them (softmax, norms, reductions) and MKL picks its kernels by CPU model: fp32
round-off then differs between machines, and hundreds of SFT/RL steps amplify it into other
models (docs/reproduction.md, "The same numbers on another machine"). AVX2 runs on every x86-64
server CPU of the last decade, at the same speed here. MKL honours MKL_CBWR on Intel CPUs only
(AMD CPUs take MKL's AVX2 path anyway). RLAD_NATIVE_CPU_KERNELS=1 keeps the machine's own."""


def pin_cpu_numerics(environ=None) -> None:
    """Set PINNED_CPU_NUMERICS in `environ` (os.environ) unless RLAD_NATIVE_CPU_KERNELS=1; called
    before torch is imported, and inherited by the processes torchrun starts."""
    import os

    environ = os.environ if environ is None else environ
    if environ.get("RLAD_NATIVE_CPU_KERNELS") != "1":
        environ.update(PINNED_CPU_NUMERICS)


LIBRARY_NOISE = (
    r".*(Transformer Engine|Apex).*(not installed|Falling back).*",  # megatron on CPU: expected
    r"full scope is deprecated",                                     # megatron's own default
)
"""Library warnings that say nothing a user can act on (megatron-core's import-time notes about
optional GPU extensions; FutureWarnings raised inside megatron and torch), filtered before any
subcommand imports them; PYTHONWARNINGS still applies to everything else."""


def _filter_library_warnings() -> None:
    import warnings

    for pattern in LIBRARY_NOISE:
        warnings.filterwarnings("ignore", message=pattern, category=UserWarning)
    # deprecations inside megatron-core and torch.distributed.checkpoint (their calls, not ours)
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(megatron|torch)(\.|$)")


def main(argv=None) -> int:
    pin_cpu_numerics()
    _filter_library_warnings()
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may come after options (`reproduce R --quick run_dir=X`)
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-")
                                                     for e in extra):
        args.overrides = list(args.overrides) + extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
