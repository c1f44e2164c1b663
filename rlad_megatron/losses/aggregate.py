"""Token -> scalar aggregation of per-token losses, exact under micro-batching and data parallelism.

Contract (every loss in this package follows it):

    loss(micro-batch) = SUM of the micro-batch's contributions / GLOBAL normaliser

  seq_mean_token_mean (the paper's Eq. 1/4: mean over tokens of each sequence, then over sequences)
      loss = sum_i [ sum_t m_it * v_it / n_i ] / num_seqs
      n_i      = sum_t m_it, the loss tokens of sequence i (rows with n_i == 0 contribute 0)
      num_seqs = sequences with n_i > 0 in the WHOLE global batch (all micro-batches, all DP ranks)
  token_mean
      loss = sum_{i,t} m_it * v_it / num_tokens
      num_tokens = loss tokens in the WHOLE global batch

Micro-batches split rows, never a sequence, so n_i is always local. With the global normaliser
passed in, summing the returned losses over micro-batches and DP ranks gives the loss of the whole
batch in one call (exactly, up to float rounding of the sum); averaging micro-batch means would
not. When `num_seqs` / `num_tokens` is None it defaults to this call's own count, so one call on
the whole batch is the plain mean. `global_normalizers(loss_mask)` gives both counts of a batch;
the trainer computes them on the global batch (or all-reduces them with SUM over DP).

Shapes: values [b, s] float, loss_mask [b, s] bool or 0/1. Values at loss_mask == 0 are ignored
even when NaN or Inf (selected away with torch.where, never multiplied by 0).
"""

from __future__ import annotations

from typing import Callable, Union

import torch
from torch import Tensor

Count = Union[int, float, Tensor, None]


def _normaliser(count: Count, local: Tensor, like: Tensor) -> Tensor:
    """count (or the local count when None) as a tensor of like's dtype, at least 1 (0 / 0 -> 0)."""
    n = local if count is None else torch.as_tensor(count)
    return n.to(dtype=like.dtype, device=like.device).clamp(min=1)


def seq_mean_token_mean(values: Tensor, loss_mask: Tensor, *, num_seqs: Count = None,
                        num_tokens: Count = None) -> Tensor:
    """sum_i [ sum_t m_it * v_it / n_i ] / num_seqs; num_tokens is unused (uniform signature)."""
    mask = loss_mask.bool()
    tokens_per_seq = mask.sum(dim=-1)                                    # [b]
    seq_sums = torch.where(mask, values, torch.zeros_like(values)).sum(dim=-1)
    seq_means = seq_sums / tokens_per_seq.clamp(min=1).to(values.dtype)  # [b]
    return seq_means.sum() / _normaliser(num_seqs, (tokens_per_seq > 0).sum(), values)


def token_mean(values: Tensor, loss_mask: Tensor, *, num_seqs: Count = None,
               num_tokens: Count = None) -> Tensor:
    """sum_{i,t} m_it * v_it / num_tokens; num_seqs is unused (uniform signature)."""
    mask = loss_mask.bool()
    total = torch.where(mask, values, torch.zeros_like(values)).sum()
    return total / _normaliser(num_tokens, mask.sum(), values)


AGGREGATIONS: dict[str, Callable[..., Tensor]] = {
    "seq_mean_token_mean": seq_mean_token_mean,
    "token_mean": token_mean,
}


def check_agg(agg: str) -> None:
    """ValueError naming the known aggregations when `agg` is not one of them."""
    if agg not in AGGREGATIONS:
        raise ValueError(f"unknown agg {agg!r}; known: {sorted(AGGREGATIONS)}")


def aggregate(values: Tensor, loss_mask: Tensor, agg: str, *,
              num_seqs: Count = None, num_tokens: Count = None) -> Tensor:
    """values [b, s], loss_mask [b, s] -> scalar, by the named aggregation (module docstring)."""
    check_agg(agg)
    return AGGREGATIONS[agg](values, loss_mask, num_seqs=num_seqs, num_tokens=num_tokens)


def global_normalizers(loss_mask: Tensor) -> dict[str, Tensor]:
    """loss_mask [b, s] -> {"num_seqs": sequences with a loss token, "num_tokens": loss tokens}.

    Both are sums over rows, so per-rank values all-reduced with SUM give the global ones.
    """
    mask = loss_mask.bool()
    return {"num_seqs": mask.any(dim=-1).sum(), "num_tokens": mask.sum()}
