"""Teacher log-probs straight from the final hidden states, never holding the full logits.

    logits_chunk = hidden[t0:t1] @ W^T                     [c, b, V/tp], hidden's dtype
    logprob[b, t] = log softmax(logits_chunk[t, b] / T)[tokens[b, t]]   (as in `logprobs`)

Shapes: hidden [s, b, h] (megatron's sequence-first layout, after the final layernorm),
output_weight [V/tp, h] (this rank's ColumnParallelLinear shard of the output layer), tokens
[b, s] global ids, result [b, s] fp32 (float64 for float64 hidden), identical on every TP rank.

Forward only (runs under torch.no_grad): per chunk of positions, one matmul, the local max / sum of
exponentials and the target pick; the per-position statistics are combined across the TP group
once at the end (see `vocab_shard`), so memory is one chunk of logits plus its fp32 buffer,
whatever the sequence length. Padding rows of the weight (global ids >= vocab_size) are never
multiplied.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist

from rlad_megatron.ops.chunks import Workspace, default_chunk_size, softmax_stats, spans
from rlad_megatron.ops.vocab_shard import (
    check_options, check_tokens, combine, compute_dtype, pick_target, vocab_shard)


def _check(hidden: torch.Tensor, output_weight: torch.Tensor) -> None:
    if hidden.dim() != 3 or not hidden.is_floating_point():
        raise ValueError(f"hidden must be a floating [s, b, h] tensor, got shape "
                         f"{tuple(hidden.shape)} dtype {hidden.dtype}")
    if output_weight.dim() != 2 or output_weight.shape[1] != hidden.shape[2]:
        raise ValueError(f"output_weight shape {tuple(output_weight.shape)} is not [V/tp, h] "
                         f"with h = hidden.shape[2] = {hidden.shape[2]}")
    if output_weight.dtype != hidden.dtype:
        raise ValueError(f"output_weight dtype {output_weight.dtype} differs from hidden dtype "
                         f"{hidden.dtype}")


@torch.no_grad()
def fused_token_logprobs(hidden: torch.Tensor, output_weight: torch.Tensor, tokens: torch.Tensor,
                         tp_group: Optional[dist.ProcessGroup] = None, *,
                         temperature: float = 1.0, chunk_size: Optional[int] = None,
                         vocab_size: Optional[int] = None) -> torch.Tensor:
    """log softmax(hidden @ W^T / T)[tokens] over the TP-sharded vocabulary -> [b, s] fp32.

    Args:
        hidden: [s, b, h] final hidden states (after the final layernorm).
        output_weight: [V/tp, h] this rank's shard of the output layer weight.
        tokens: [b, s] global token ids (< vocab_size).
        tp_group: the tensor-parallel group; None (or size 1) for a full-vocabulary call.
        temperature: T > 0; the logits are divided by it before the softmax.
        chunk_size: sequence positions per chunk; None picks one by a byte budget (independent
            of the sequence length, so memory does not grow with it).
        vocab_size: the true vocabulary size; global ids >= vocab_size are padding. None: none.
    Returns:
        [b, s] fp32 (float64 for float64 hidden), the same on every TP rank; no gradient.
    """
    _check(hidden, output_weight)
    s, b, _ = hidden.shape
    check_tokens(tokens, (b, s), f"hidden shape {tuple(hidden.shape)} = [s, b, h]")
    check_options(temperature, chunk_size)
    shard = vocab_shard(output_weight.shape[0], tp_group, vocab_size, what="output_weight.shape[0]")
    nv = shard.n_valid
    dtype = compute_dtype(hidden.dtype)
    if chunk_size is None:
        chunk_size = default_chunk_size(s, b * nv, hidden.device, fraction=None)
    weight_t = output_weight[:nv].t()
    # per-position values in the hidden states' order: flat position t * b + i
    local, owned = shard.local_targets(tokens.t().long().reshape(-1))
    m, sumexp, target = (torch.zeros(s * b, dtype=dtype, device=hidden.device) for _ in range(3))
    if nv:
        rows = min(chunk_size, s) * b
        work = Workspace(rows * nv, dtype, hidden.device, 1)
        logits_buf = Workspace(rows * nv, hidden.dtype, hidden.device, 1)
        for t0, t1 in spans(s, chunk_size):
            lo, hi = t0 * b, t1 * b
            shape = torch.Size((hi - lo, nv))
            logits = torch.matmul(hidden[t0:t1].reshape(hi - lo, -1), weight_t,
                                  out=logits_buf.get(0, shape))
            m[lo:hi], sumexp[lo:hi], _ = softmax_stats(logits, temperature, work.get(0, shape))
            target[lo:hi] = pick_target(logits, local[lo:hi], owned[lo:hi], dtype)
    group = combine(shard, m, sumexp, target, None, temperature)
    logprobs = (group.target - group.max) / temperature - group.log_sumexp
    return logprobs.view(s, b).t().contiguous()
