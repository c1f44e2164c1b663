"""Process start, Megatron parallel state, seeding, and the only patches of megatron (CPU shims)."""

from rlad_megatron.runtime.distributed import DistEnv, agree_or_raise, init_distributed, print0
from rlad_megatron.runtime.parallel import Parallel, ParallelConfig, init_parallel, destroy_parallel

__all__ = ["DistEnv", "agree_or_raise", "init_distributed", "print0", "Parallel", "ParallelConfig",
           "init_parallel",
           "destroy_parallel"]
