"""Log-probabilities of given tokens under vocab-parallel logits, without gathering the vocabulary.

    logprob[b, t] = log softmax(z[b, t])[tokens[b, t]],   z = logits / T
                  = (x_t - M) / T - log S                  as computed (see `vocab_shard`)

over the real (non-padding) vocabulary. Shapes: logits [b, s, V/tp] (this rank's block, as
GPTModel returns it with parallel_output=True), tokens [b, s] global ids, result [b, s] fp32
(float64 for float64 logits), identical on every rank of the TP group. The target logit comes
from the owning rank (masked local pick, summed over the group).

Memory: chunks over the sequence (see `chunks`), one fp32 chunk buffer [b, chunk, V/tp]; in
backward also the gradient itself, in logits' dtype. Backward needs no collective: per-position
[b, s] factors are saved from forward and the chunk's softmax is recomputed:

    d logprob / d logits[v] = (1[v == token] - p_v) / T,   p = softmax(z)

written as -(grad / T) * p, plus grad / T added at the target index on the owning rank (no one-hot).
Padding entries get zero gradient.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
from torch.autograd.function import once_differentiable

from rlad_megatron.ops.chunks import ChunkPlan, Workspace, softmax_into, softmax_stats
from rlad_megatron.ops.vocab_shard import (
    check_options, check_tokens, combine, compute_dtype, pick_target, vocab_shard)


def check_logits(logits: torch.Tensor) -> None:
    if logits.dim() != 3 or not logits.is_floating_point():
        raise ValueError(f"logits must be a floating [b, s, V/tp] tensor, got shape "
                         f"{tuple(logits.shape)} dtype {logits.dtype}")


def stat_buffers(logits: torch.Tensor, count: int, dtype: torch.dtype) -> list[torch.Tensor]:
    """`count` flat [b * s] per-position buffers."""
    n = logits.shape[0] * logits.shape[1]
    return [torch.zeros(n, dtype=dtype, device=logits.device) for _ in range(count)]


class _TokenLogprobs(torch.autograd.Function):

    @staticmethod
    def forward(ctx, logits, tokens, shard, temperature, chunk_size):
        dtype = compute_dtype(logits.dtype)
        nv = shard.n_valid
        plan = ChunkPlan(logits, chunk_size, nv)
        m, sumexp, p_max = stat_buffers(logits, 3, dtype)
        if nv:
            ws = Workspace(plan.max_rows * nv, dtype, logits.device, 1)
            for lo, hi in plan.ranges:
                x = plan.view(logits, lo, hi)[:, :nv]
                m[lo:hi], sumexp[lo:hi], p_max[lo:hi] = softmax_stats(
                    x, temperature, ws.get(0, x.shape))
            del ws
        b, s, _ = logits.shape
        local, owned = shard.local_targets(tokens.long().reshape(-1))
        target = pick_target(logits, local.view(b, s), owned.view(b, s), dtype).reshape(-1)
        group = combine(shard, m, sumexp, target, None, temperature)
        # backward recomputes the chunk's local softmax; times `scale` it is the global p
        scale = torch.exp((m - group.max) / temperature - group.log_sumexp) / p_max
        ctx.save_for_backward(logits, local, owned, m, scale)
        ctx.shard, ctx.temperature, ctx.plan = shard, temperature, plan
        logprobs = (group.target - group.max) / temperature - group.log_sumexp
        return logprobs.view(b, s)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        logits, local, owned, m, scale = ctx.saved_tensors
        shard, temperature, plan = ctx.shard, ctx.temperature, ctx.plan
        nv = shard.n_valid
        g = grad_out.to(scale.dtype).reshape(-1) / temperature
        neg_g_scale = (-g * scale).unsqueeze(-1)
        g_target = torch.where(owned, g, torch.zeros_like(g)).unsqueeze(-1)
        index = local.unsqueeze(-1)
        grad = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
        if nv < shard.local_size:
            grad[..., nv:].zero_()
        if nv == 0:
            return grad, None, None, None, None
        direct = logits.dtype == scale.dtype and nv == shard.local_size
        ws = None if direct else Workspace(plan.max_rows * nv, scale.dtype, logits.device, 1)
        for lo, hi in plan.ranges:
            dst = plan.view(grad, lo, hi)[:, :nv]
            buf = dst if direct else ws.get(0, dst.shape)
            x = plan.view(logits, lo, hi)[:, :nv]
            p = softmax_into(x, m[lo:hi], temperature, buf)
            p.mul_(neg_g_scale[lo:hi])  # -g/T * p
            p.scatter_add_(-1, index[lo:hi], g_target[lo:hi])  # + g/T at the target
            if not direct:
                dst.copy_(p)
        return grad, None, None, None, None


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor,
                   tp_group: Optional[dist.ProcessGroup] = None, *, temperature: float = 1.0,
                   chunk_size: Optional[int] = None, vocab_size: Optional[int] = None
                   ) -> torch.Tensor:
    """log softmax(logits / T)[tokens] over the TP-sharded vocabulary -> [b, s] fp32.

    Args:
        logits: [b, s, V/tp], this rank's vocabulary block (any float dtype; math in fp32).
        tokens: [b, s] global token ids (< vocab_size).
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
    check_tokens(tokens, logits.shape[:2], f"logits shape {tuple(logits.shape)}")
    check_options(temperature, chunk_size)
    shard = vocab_shard(logits.shape[-1], tp_group, vocab_size)
    return _TokenLogprobs.apply(logits, tokens, shard, float(temperature), chunk_size)
