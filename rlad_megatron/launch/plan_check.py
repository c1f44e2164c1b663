"""The nemo-run plugin that runs `rlad plan` on a task before nemo-run submits it.

It imports nemo_run, so only launch/nemo_run.py loads it, and only when nemo-run is installed
(the `launch` extra). nemo-run records a job's plugins by import path, hence a module of its own.
"""

from __future__ import annotations

import dataclasses

import nemo_run as run


@dataclasses.dataclass(kw_only=True)
class PlanCheck(run.Plugin):
    """Refuse (ValueError) a task whose layout does not divide the models or does not fit."""

    gpu_memory_gib: float = 80.0
    prompt_len: int = 1024

    def setup(self, task, executor) -> None:
        from rlad_megatron.launch.nemo_run import check_layout

        check_layout(task, executor, self.gpu_memory_gib, self.prompt_len)
