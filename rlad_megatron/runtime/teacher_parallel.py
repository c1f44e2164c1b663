"""A teacher on its own parallel layout: its TP/PP sizes, and its process groups built from the
same world as the student's, without touching megatron's parallel_state globals.

`TeacherParallelConfig` (teacher.parallel) names the sizes; 0 / null fields take the student's
value, and a layout equal to the student's shares the student's `Parallel` (today's behaviour,
bit for bit). Otherwise `init_teacher_parallel` returns a `Parallel` whose groups are new
(`detached=True`): megatron's globals keep describing the student, and every megatron call on
the teacher's path gets the teacher's groups explicitly (GPTModel's pg_collection, the
schedule's pg_collection and P2PCommunicator, ops/'s tp_group).

Rank order is megatron's default ("tp-cp-ep-dp-pp") at the teacher's sizes:

    rank = tp_rank + tp * (dp_rank + dp * pp_rank)

so a teacher TP group is tp adjacent ranks (one node when tp <= GPUs per node), as for the
student. The row exchange between the two layouts is models/teacher_layout.py.

Not yet here: sequence parallelism and context parallelism for the teacher (size 1), MoE groups.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Optional

import torch.distributed as dist

from rlad_megatron.runtime import parallel as _parallel
from rlad_megatron.runtime.parallel import Parallel, ParallelConfig


@dataclass
class TeacherParallelConfig:
    """The teacher's own model-parallel sizes; data parallelism takes the remaining ranks."""

    tensor: int = 0
    """Teacher tensor-parallel size; 0: the student's (parallel.tensor)."""
    pipeline: int = 0
    """Teacher pipeline-parallel size; 0: the student's (parallel.pipeline)."""
    virtual_pipeline: Optional[int] = None
    """Teacher model chunks per pipeline rank (interleaved schedule); null: the student's
    (parallel.virtual_pipeline), 1: no interleaving."""

    def resolve(self, student: ParallelConfig) -> ParallelConfig:
        """The teacher's sizes with 0 / null filled in from the student's layout."""
        vpp = student.virtual_pipeline if self.virtual_pipeline is None else self.virtual_pipeline
        pp = self.pipeline or student.pipeline
        if pp < 2 and self.virtual_pipeline is None:
            vpp = None  # the student's interleaving does not carry over to an unpipelined teacher
        return ParallelConfig(tensor=self.tensor or student.tensor, pipeline=pp,
                              virtual_pipeline=vpp, sequence_parallel=False, seed=student.seed)

    def is_own(self, student: ParallelConfig) -> bool:
        """Whether the teacher needs groups of its own (its layout differs from the student's)."""
        mine = self.resolve(student)
        return ((mine.tensor, mine.pipeline, _vpp(mine.virtual_pipeline))
                != (student.tensor, student.pipeline, _vpp(student.virtual_pipeline)))

    def validate(self, student: ParallelConfig, world_size: int,
                 prefix: str = "teacher.parallel") -> None:
        for key in ("tensor", "pipeline"):
            value = getattr(self, key)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{prefix}.{key} must be 0 (the student's) or a positive "
                                 f"integer, got {value!r}")
        if self.virtual_pipeline is not None and self.virtual_pipeline < 1:
            raise ValueError(f"{prefix}.virtual_pipeline must be >= 1 or null, got "
                             f"{self.virtual_pipeline}")
        self.resolve(student).validate(world_size, prefix=prefix)


def _vpp(value: Optional[int]) -> Optional[int]:
    return value if (value or 1) > 1 else None


def _partition(tp: int, dp: int, pp: int, vary: str) -> list[list[int]]:
    """The groups along dimension `vary` ("tp", "dp", "pp" or "mp" = tp x pp), each a list of
    global ranks, in megatron's rank order."""
    def rank(t, d, p):
        return t + tp * (d + dp * p)

    if vary == "tp":
        return [[rank(t, d, p) for t in range(tp)] for p in range(pp) for d in range(dp)]
    if vary == "dp":
        return [[rank(t, d, p) for d in range(dp)] for p in range(pp) for t in range(tp)]
    if vary == "pp":
        return [[rank(t, d, p) for p in range(pp)] for d in range(dp) for t in range(tp)]
    if vary == "mp":
        return [sorted(rank(t, d, p) for t in range(tp) for p in range(pp)) for d in range(dp)]
    raise ValueError(vary)


def _subgroup(ranks_list: list[list[int]]):
    """This rank's group of a partition (every rank takes part in creating all of them)."""
    mine, _ = dist.new_subgroups_by_enumeration(ranks_list)
    if mine is not None:
        _parallel._CREATED_GROUPS.append(mine)  # released by destroy_parallel()
    return mine


def init_teacher_parallel(cfg: TeacherParallelConfig, student_cfg: ParallelConfig,
                          student: Parallel) -> Parallel:
    """The teacher's `Parallel`: `student` itself when the layouts agree, else new groups from
    the same world (a collective: every rank calls it, after init_parallel)."""
    if not cfg.is_own(student_cfg):
        return student
    from megatron.core.process_groups_config import ProcessGroupCollection

    world = dist.get_world_size()
    cfg.validate(student_cfg, world)
    mine = cfg.resolve(student_cfg)
    tp, pp, vpp = mine.tensor, mine.pipeline, _vpp(mine.virtual_pipeline)
    dp = world // (tp * pp)
    rank = dist.get_rank()
    tp_rank, dp_rank, pp_rank = rank % tp, (rank // tp) % dp, rank // (tp * dp)
    groups = {dim: _subgroup(_partition(tp, dp, pp, dim)) for dim in ("tp", "dp", "pp", "mp")}
    pp_lists = _partition(tp, dp, pp, "pp")
    embd = _subgroup([sorted({r[0], r[-1]}) for r in pp_lists])  # tied embeddings' first/last
    pos_embd = _subgroup([[r[0]] for r in pp_lists])  # first stages
    pgs = ProcessGroupCollection()
    pgs.tp, pgs.pp, pgs.mp, pgs.dp = groups["tp"], groups["pp"], groups["mp"], groups["dp"]
    # no context parallelism: cp is this rank alone (the student's cp group has that membership)
    pgs.cp = student.pg_collection.cp
    # no expert parallelism either: ep is this rank alone (megatron's dynamic inference context
    # reads it, rollout.engine=continuous)
    pgs.ep = student.pg_collection.ep
    pgs.tp_cp, pgs.dp_cp, pgs.intra_dp_cp = groups["tp"], groups["dp"], groups["dp"]
    pgs.embd = embd
    pgs.pos_embd = pos_embd  # None off the first stage, as in megatron
    return Parallel(tp=tp, pp=pp, vpp=vpp, dp=dp, tp_rank=tp_rank, pp_rank=pp_rank,
                    dp_rank=dp_rank, tp_group=groups["tp"], pp_group=groups["pp"],
                    dp_group=groups["dp"], pg_collection=pgs, sequence_parallel=False,
                    seed=student.seed, detached=True)


@contextlib.contextmanager
def replica_ids_of(par: Parallel):
    """Checkpoint replica ids from `par`'s data-parallel rank, for a model on its own groups:
    megatron-core 0.16.1 reads the global DP rank for the replica id of a tied output weight on
    the last pipeline stage (LanguageModule.tie_embeddings_and_output_weights_state_dict), so
    megatron's own override (set_data_parallel_rank) holds the teacher's rank meanwhile."""
    from megatron.core import parallel_state as ps

    before = ps._MPU_DATA_PARALLEL_RANK
    ps.set_data_parallel_rank(par.dp_rank)
    try:
        yield
    finally:
        ps.set_data_parallel_rank(before)
