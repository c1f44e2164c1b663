"""The nemo-run plugin that runs `rlad plan` on a task before nemo-run submits it.

It imports nemo_run, so only launch/nemo_run.py loads it, and only when nemo-run is installed
(the `launch` extra). nemo-run records a job's plugins by import path, hence a module of its own;
it imports nothing from launch/nemo_run.py (the import runs one way).
"""

from __future__ import annotations

import dataclasses

import nemo_run as run

from rlad_megatron.config.run import resolve_run_config


@dataclasses.dataclass(kw_only=True)
class PlanCheck(run.Plugin):
    """Refuse (ValueError) a task whose layout does not divide the models or does not fit."""

    gpu_memory_gib: float = 80.0
    prompt_len: int = 1024

    def setup(self, task, executor) -> None:
        check_layout(task, executor, self.gpu_memory_gib, self.prompt_len)


def ranks_of(executor) -> tuple[int, int]:
    """(nodes, ranks per node) that `executor` will start."""
    nodes = getattr(executor, "nodes", 1)
    per_node = getattr(executor, "torchrun_nproc_per_node", None) or executor.ntasks_per_node
    return nodes, per_node


def check_layout(task, executor, gpu_memory_gib: float = 80.0, prompt_len: int = 1024) -> None:
    """Refuse (ValueError with `rlad plan`'s reason) a task whose layout does not divide the
    models or does not fit `gpu_memory_gib` on the executor's nodes and GPUs."""
    import fiddle as fdl

    from rlad_megatron.launch.plan import build_request, plan

    cfg = getattr(task, "cfg", None)
    cfg = fdl.build(cfg) if isinstance(cfg, fdl.Buildable) else cfg
    cfg = resolve_run_config(cfg, getattr(task, "config_file", None),
                             getattr(task, "overrides", None) or ())
    nodes, per_node = ranks_of(executor)
    result = plan(build_request(nodes=nodes, gpus_per_node=per_node, config=cfg,
                                gpu_memory_gib=gpu_memory_gib, prompt_len=prompt_len))
    if not result.ok:
        raise ValueError(f"rlad plan refused the layout: {result.reason}")

