"""The Megatron parallel layout: the only caller of initialize_model_parallel and the only reader
of megatron's parallel_state globals.

`init_parallel(ParallelConfig)` builds the state once and returns a `Parallel`: sizes, this rank's
coordinates and the process groups (a megatron ProcessGroupCollection plus the common groups by
name). Student and teacher are both built from the same `Parallel`, so they share TP, PP and DP
groups by construction; every other module receives groups from it instead of looking them up.

Rank order is megatron's default "tp-cp-ep-dp-pp": TP ranks are adjacent (one node), PP is the
outermost dimension. The data-parallel size is derived: world_size / (tensor * pipeline).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist

from rlad_megatron.runtime import cpu_shims

_CREATED_GROUPS: list = []
"""Process groups made by megatron's initialize_model_parallel; megatron never destroys them, so
a process that re-initialises (tests, the demo's stages) would accumulate thousands of gloo
threads without destroy_parallel() releasing them."""


@dataclass
class ParallelConfig:
    """Model-parallel sizes; data parallelism takes the remaining ranks."""

    tensor: int = 1
    """Tensor-parallel size (megatron tensor_model_parallel_size)."""
    pipeline: int = 1
    """Pipeline-parallel size (megatron pipeline_model_parallel_size)."""
    virtual_pipeline: Optional[int] = None
    """Model chunks per pipeline rank for the interleaved schedule; None for 1F1B."""
    sequence_parallel: bool = False
    """Megatron sequence parallelism (needs tensor > 1 and the transformer-engine layer spec, a
    GPU). Generation (rollout/pipeline.py) refuses it."""
    seed: int = 1234
    """Seed of the model-parallel RNG streams (megatron model_parallel_cuda_manual_seed) and of
    torch.manual_seed; `rlad train` sets it to the run's `seed`."""

    def validate(self, world_size: int, prefix: str = "parallel") -> None:
        for key in ("tensor", "pipeline"):
            value = getattr(self, key)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{prefix}.{key} must be a positive integer, got {value!r}")
        if self.virtual_pipeline is not None:
            if self.virtual_pipeline < 1:
                raise ValueError(f"{prefix}.virtual_pipeline must be >= 1 or null, got "
                                 f"{self.virtual_pipeline}")
            if self.pipeline < 2 and self.virtual_pipeline > 1:
                raise ValueError(f"{prefix}.virtual_pipeline={self.virtual_pipeline} needs "
                                 f"{prefix}.pipeline >= 2, got {self.pipeline}")
        if self.sequence_parallel and self.tensor == 1:
            raise ValueError(f"{prefix}.sequence_parallel needs {prefix}.tensor > 1")
        model_parallel = self.tensor * self.pipeline
        if world_size % model_parallel:
            hint = (f": this is one process; launch it with torchrun --nproc-per-node "
                    f"{model_parallel} (or a multiple)" if world_size == 1 else "")
            raise ValueError(
                f"{prefix}.tensor * {prefix}.pipeline = {self.tensor} * {self.pipeline} = "
                f"{model_parallel} does not divide the world size {world_size}{hint}")


@dataclass
class Parallel:
    """This rank's place in the layout and the groups to pass down. Shared by student and
    teacher."""

    tp: int
    pp: int
    vpp: Optional[int]
    dp: int
    tp_rank: int
    pp_rank: int
    dp_rank: int
    tp_group: dist.ProcessGroup
    pp_group: dist.ProcessGroup
    dp_group: dist.ProcessGroup
    pg_collection: object  # megatron.core.process_groups_config.ProcessGroupCollection
    sequence_parallel: bool = False
    seed: int = 1234
    detached: bool = False
    """Groups of its own, not megatron's globals (a teacher on its own layout,
    runtime/teacher_parallel.py): megatron calls must then be given them explicitly."""

    @property
    def is_first_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.pp - 1

    @property
    def last_stage_global_rank(self) -> int:
        """Global rank of the last pipeline stage in this rank's pipeline group."""
        return dist.get_global_rank(self.pp_group, self.pp - 1)

    def forward_backward_func(self, config):
        """megatron's schedule for this layout, chosen from these sizes (not the global PP
        size), and given this layout's groups when they are not megatron's globals."""
        from megatron.core.pipeline_parallel import get_forward_backward_func

        func = get_forward_backward_func(pp_size=self.pp, vp_size=self.vpp)
        if not self.detached:
            return func
        from megatron.core.pipeline_parallel.p2p_communication import P2PCommunicator

        extra = {"pg_collection": self.pg_collection}
        if self.pp > 1:
            extra["p2p_communicator"] = P2PCommunicator(pp_group=self.pp_group, config=config)
        return functools.partial(func, **extra)

    def describe(self) -> str:
        vpp = f" vpp={self.vpp}" if self.vpp else ""
        return (f"tp={self.tp} pp={self.pp}{vpp} dp={self.dp} "
                f"(tp_rank={self.tp_rank} pp_rank={self.pp_rank} dp_rank={self.dp_rank})")


def init_parallel(cfg: ParallelConfig) -> Parallel:
    """Initialise megatron's parallel state (and the CPU shims when CUDA is absent) and seed."""
    from megatron.core import parallel_state as ps
    from megatron.core.process_groups_config import ProcessGroupCollection

    if not dist.is_initialized():
        raise RuntimeError("call rlad_megatron.runtime.init_distributed() before init_parallel()")
    cfg.validate(dist.get_world_size())
    cpu_shims.apply()
    destroy_parallel()
    vpp = cfg.virtual_pipeline if (cfg.virtual_pipeline or 1) > 1 else None
    before = set(_groups())
    ps.initialize_model_parallel(
        tensor_model_parallel_size=cfg.tensor,
        pipeline_model_parallel_size=cfg.pipeline,
        virtual_pipeline_model_parallel_size=vpp,
    )
    _CREATED_GROUPS.extend(g for g in _groups() if g not in before)
    cpu_shims.model_parallel_manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    return Parallel(
        tp=cfg.tensor, pp=cfg.pipeline, vpp=vpp,
        dp=ps.get_data_parallel_world_size(),
        tp_rank=ps.get_tensor_model_parallel_rank(),
        pp_rank=ps.get_pipeline_model_parallel_rank(),
        dp_rank=ps.get_data_parallel_rank(),
        tp_group=ps.get_tensor_model_parallel_group(),
        pp_group=ps.get_pipeline_model_parallel_group(),
        dp_group=ps.get_data_parallel_group(),
        pg_collection=ProcessGroupCollection.use_mpu_process_groups(),
        sequence_parallel=cfg.sequence_parallel,
        seed=cfg.seed,
    )


def _groups() -> list:
    from torch.distributed.distributed_c10d import _world

    return [g for g in list(_world.pg_map) if g is not dist.GroupMember.WORLD]


def destroy_parallel() -> None:
    """Tear down megatron's parallel state and release the process groups it created."""
    from megatron.core import parallel_state as ps

    if ps.model_parallel_is_initialized():
        ps.destroy_model_parallel()
    while _CREATED_GROUPS:
        group = _CREATED_GROUPS.pop()
        if group in _groups():
            dist.destroy_process_group(group)
