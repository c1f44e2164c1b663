"""SFT on teacher-generated traces (the offline-distillation baseline): token negative
log-likelihood."""

from __future__ import annotations

import torch
from torch import Tensor

from rlad_megatron.losses.aggregate import Count, aggregate
from rlad_megatron.losses.diagnostics import count_stats
from rlad_megatron.losses.metrics import stat


def sft_loss(logprobs: Tensor, loss_mask: Tensor, *, agg: str,
             num_seqs: Count = None, num_tokens: Count = None) -> tuple[Tensor, dict[str, Tensor]]:
    """loss = -agg(lp) -> (scalar loss, metrics).

    logprobs lp [b, s] fp32 (with grad): the student's log-probs of the trace tokens; loss_mask
    [b, s] (1 on response tokens). Aggregation contract as in trrd_loss: SUM contribution /
    GLOBAL num_seqs (seq_mean_token_mean) or num_tokens (token_mean, loss.sft's default);
    None -> this call's counts. Metrics: loss/sft, sft/nll_mean, count/tokens, count/seqs.
    """
    if logprobs.shape != loss_mask.shape:
        raise ValueError(f"logprobs: shape {tuple(logprobs.shape)} != loss_mask "
                         f"{tuple(loss_mask.shape)}")
    mask = loss_mask.bool()
    nll = -torch.where(mask, logprobs, torch.zeros_like(logprobs))
    loss = aggregate(nll, mask, agg, num_seqs=num_seqs, num_tokens=num_tokens)
    metrics = {**count_stats(mask), "sft/nll_mean": stat(nll.sum()), "loss/sft": stat(loss)}
    return loss, metrics
