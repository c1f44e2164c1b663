"""Teacher log-probs of the student's rows when the teacher has its own parallel layout
(teacher.parallel; groups from runtime/teacher_parallel.py).

Each student DP rank d holds its rollout rows, tokens [b_d, s_d] int64 (identical on every rank
of its student model-parallel group). The teacher's DP ranks are different sets of ranks, so the
rows move:

    gather   every rank receives every student DP rank's rows (one all-gather of token ids over
             the world, padded to the largest [b, s]); the global row order is student DP rank 0's
             rows, then rank 1's, ...
    score    teacher DP rank e scores the contiguous slice e of the B global rows through its own
             model-parallel group (forward_logprobs, fused: no [b, s, V] logits; a streamed
             teacher, teacher.offload=stream, layer-major with streamed_logprobs)
    scatter  the teacher's last pipeline stage, TP rank 0, of each teacher DP rank writes its
             slice into a zero [B, S] fp32 buffer; one all-reduce (sum) over the world completes
             it (each row written by exactly one rank: exact), and every student rank keeps its
             own rows [b_d, s_d]

Only token ids and [b, s] log-probs cross ranks, never logits, and they stay on the compute device
(the [b] widths and the per-rank counts are read on the host). Cost per step: an all-gather of world
x B_max x S_max int64 ids and an all-reduce of B x S fp32 (a point-to-point exchange would move
less; this keeps one collective each way). With teacher.score_during_rollout the exchange runs once
per generation micro-batch (every student DP rank generates as many).

Micro-batches: the teacher cuts its own rows (fixed micro_batch_size rows at the widest row's
width, or token budgets over the rows' widths); positions at or past a row's width in the
student's plan come back 0, as from a pass in the student's layout.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist

from rlad_megatron.data.micro_batches import MicroBatchPlan, plan_micro_batches
from rlad_megatron.models.build import BuiltModel
from rlad_megatron.models.forward import forward_logprobs
from rlad_megatron.models.teacher_stream import StreamedTeacher, streamed_logprobs
from rlad_megatron.runtime import devices
from rlad_megatron.runtime.parallel import Parallel


def plan_widths(plan: Optional[MicroBatchPlan], shape) -> torch.Tensor:
    """[b] int64 columns each row keeps in `plan` (all s without a plan)."""
    b, s = shape
    widths = torch.full((b,), s, dtype=torch.int64)
    if plan is not None:
        for rows, width in zip(plan.rows, plan.widths):
            widths[rows] = min(int(width), s)
    return widths


def _gather_rows(student: Parallel, tokens: torch.Tensor, widths: torch.Tensor):
    """Every student DP rank's rows on every rank: (tokens [B, S], widths [B], row offset of each
    student DP rank [dp + 1])."""
    world = dist.get_world_size()
    b, s = tokens.shape
    owner = int(student.tp_rank == 0 and student.pp_rank == 0)
    meta = torch.tensor([student.dp_rank, owner, b, s], dtype=torch.int64)
    metas = [torch.empty_like(meta) for _ in range(world)]
    devices.all_gather(metas, meta)
    metas = torch.stack(metas)
    b_max, s_max = int(metas[:, 2].max()), int(metas[:, 3].max())
    packed = torch.zeros(b_max, s_max + 1, dtype=torch.int64, device=tokens.device)
    packed[:b, :s] = tokens
    packed[:b, s_max] = widths.to(tokens.device)
    parts = [torch.empty_like(packed) for _ in range(world)]
    devices.all_gather(parts, packed)
    owners = sorted((int(m[0]), r) for r, m in enumerate(metas) if int(m[1]))
    rows = [parts[r][:int(metas[r, 2])] for _, r in owners]
    counts = torch.tensor([0] + [int(metas[r, 2]) for _, r in owners])
    all_rows = torch.cat(rows)  # on the compute device, like the rollout's tokens
    return all_rows[:, :s_max], all_rows[:, s_max].cpu(), counts.cumsum(0)


def layout_logprobs(teacher: BuiltModel, student: Parallel, tokens: torch.Tensor, *,
                    plan: Optional[MicroBatchPlan] = None, micro_batch_size: int,
                    max_tokens: int = 0, temperature: float = 1.0,
                    chunk_size: Optional[int] = None) -> torch.Tensor:
    """[b, s] fp32 teacher log-probs of this student rank's rows `tokens` [b, s], on every rank
    of the student's layout (every pipeline stage). A collective over the whole world: every
    rank calls it, with its own rows. plan: the student's micro-batches of `tokens` (their widths
    bound each row, see the module doc); micro_batch_size / max_tokens cut the teacher's rows."""
    tpar = teacher.par
    widths = plan_widths(plan, tuple(tokens.shape))
    all_tokens, all_widths, offsets = _gather_rows(student, tokens, widths)
    total, s_max = all_tokens.shape
    if total % tpar.dp:
        raise ValueError(f"teacher.parallel: {total} rollout rows do not split evenly over the "
                         f"teacher's {tpar.dp} data-parallel ranks")
    n = total // tpar.dp
    lo = tpar.dp_rank * n
    mine = all_tokens[lo:lo + n]
    plan = plan_micro_batches(all_widths[lo:lo + n], s_max, micro_batch_size=micro_batch_size,
                              max_tokens=max_tokens)
    if isinstance(teacher, StreamedTeacher):  # teacher.offload=stream: layer-major, same numbers
        lp = streamed_logprobs(teacher, mine, plan=plan, temperature=temperature,
                               chunk_size=chunk_size)
    else:
        lp = forward_logprobs(teacher, mine, plan=plan, temperature=temperature, fused=True,
                              chunk_size=chunk_size)
    out = torch.zeros(total, s_max, dtype=torch.float32, device=tokens.device)
    if tpar.is_last_stage and tpar.tp_rank == 0:
        out[lo:lo + n] = lp
    devices.all_reduce(out)
    b, s = tokens.shape
    start = int(offsets[student.dp_rank])
    result = out[start:start + b, :s].clone()
    columns = torch.arange(s, device=result.device)[None, :]
    result[columns >= widths.to(result.device)[:, None]] = 0.0
    return result
