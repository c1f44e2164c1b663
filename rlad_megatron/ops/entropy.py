"""Entropy of the softmax over vocab-parallel logits, without gathering the vocabulary.

    H[b, t] = -sum_v p_v log p_v,   p = softmax(z[b, t]),   z = logits / T

over the real (non-padding) vocabulary. Shapes: logits [b, s, V/tp] (this rank's block), result
[b, s] fp32 (float64 for float64 logits), identical on every TP rank. H is assembled from
per-rank statistics as described in `vocab_shard` (one MAX and one SUM all-reduce of [b, s]
tensors).

Memory: chunks over the sequence (see `chunks`), two fp32 chunk buffers [b, chunk, V/tp].
Backward needs no collective: M, log S and H are saved from forward as [b, s], the softmax is
recomputed, and

    dH / d logits[v] = -p_v * (log p_v + H) / T,   log p_v = (x_v - M) / T - log S

Padding rows get zero gradient.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
from torch.autograd.function import once_differentiable

from rlad_megatron.ops.chunks import ChunkPlan, Workspace, entropy_stats, load_shifted
from rlad_megatron.ops.logprobs import check_logits, stat_buffers
from rlad_megatron.ops.vocab_shard import check_options, combine, compute_dtype, vocab_shard


class _TokenEntropy(torch.autograd.Function):

    @staticmethod
    def forward(ctx, logits, shard, temperature, chunk_size):
        dtype = compute_dtype(logits.dtype)
        nv = shard.n_valid
        plan = ChunkPlan(logits, chunk_size, nv)
        m, sumexp, spread = stat_buffers(logits, 3, dtype)
        if nv:
            ws = Workspace(plan.max_rows * nv, dtype, logits.device, 2)
            for lo, hi in plan.ranges:
                m[lo:hi], sumexp[lo:hi], spread[lo:hi] = entropy_stats(
                    plan.view(logits, lo, hi)[:, :nv], temperature, ws)
            del ws
        group = combine(shard, m, sumexp, None, spread, temperature)
        ctx.save_for_backward(logits, group.max, group.log_sumexp, group.entropy)
        ctx.shard, ctx.temperature, ctx.plan = shard, temperature, plan
        return group.entropy.view(logits.shape[:2])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        logits, big_m, log_s, entropy = ctx.saved_tensors
        shard, temperature, plan = ctx.shard, ctx.temperature, ctx.plan
        nv = shard.n_valid
        neg_g = (-grad_out.to(log_s.dtype).reshape(-1) / temperature).unsqueeze(-1)
        big_m, log_s, entropy = big_m.unsqueeze(-1), log_s.unsqueeze(-1), entropy.unsqueeze(-1)
        grad = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
        if nv < shard.local_size:
            grad[..., nv:].zero_()
        if nv == 0:
            return grad, None, None, None
        in_place = logits.dtype == log_s.dtype
        ws = Workspace(plan.max_rows * nv, log_s.dtype, logits.device, 1 if in_place else 2)
        for lo, hi in plan.ranges:
            dst = plan.view(grad, lo, hi)[:, :nv]
            log_p = dst if in_place else ws.get(1, dst.shape)
            load_shifted(plan.view(logits, lo, hi)[:, :nv], big_m[lo:hi], temperature, log_p)
            log_p.sub_(log_s[lo:hi])
            p = torch.exp(log_p, out=ws.get(0, dst.shape))
            log_p.add_(entropy[lo:hi]).mul_(p).mul_(neg_g[lo:hi])  # -g/T * p * (log p + H)
            if not in_place:
                dst.copy_(log_p)
        return grad, None, None, None


def token_entropy(logits: torch.Tensor, tp_group: Optional[dist.ProcessGroup] = None, *,
                  temperature: float = 1.0, chunk_size: Optional[int] = None,
                  vocab_size: Optional[int] = None) -> torch.Tensor:
    """Entropy of softmax(logits / T) over the TP-sharded vocabulary -> [b, s] fp32.

    Args:
        logits: [b, s, V/tp], this rank's vocabulary block (any float dtype; math in fp32).
        tp_group: the tensor-parallel group; None (or size 1) for a full-vocabulary call.
        temperature: T > 0; the logits are divided by it before the softmax.
        chunk_size: sequence positions per fp32 chunk; None picks one by a byte budget.
        vocab_size: the true vocabulary size; global ids >= vocab_size are padding and never
            count. None: no padding.
    Returns:
        [b, s] fp32 (float64 for float64 logits), the same on every TP rank. Differentiable
        w.r.t. logits; the gradient has logits' dtype.
    """
    check_logits(logits)
    check_options(temperature, chunk_size)
    shard = vocab_shard(logits.shape[-1], tp_group, vocab_size)
    return _TokenEntropy.apply(logits, shard, float(temperature), chunk_size)
