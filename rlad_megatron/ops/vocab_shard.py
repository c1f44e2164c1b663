"""One TP rank's block of the vocabulary, and the per-position statistics that combine across it.

Layout. Megatron's output layer (ColumnParallelLinear, parallel_output=True) splits the padded
vocabulary of V = tp * V_local ids into contiguous blocks: rank r holds global ids
[r * V_local, (r + 1) * V_local), so its logits are [b, s, V_local]. With `vocab_size` = V_true
(<= V), global ids >= V_true are padding; on rank r the first

    n_valid = clamp(V_true - r * V_local, 0, V_local)

local ids are real, and every computation reads only those (`logits[..., :n_valid]`), so the
padding never enters a max, a sum or a gradient.

Statistics. Per position, over this rank's real logits x_v (fp32 or wider), T > 0:

    m_r = max_v x_v                                  local max (logit units, before / T)
    S_r = sum_v exp((x_v - m_r) / T)                 local sum of exponentials
    B_r = sum_v exp((x_v - m_r) / T) * (m_r - x_v) / T     (entropy only; every term >= 0)

Across the TP group (one MAX all-reduce of m, then one SUM all-reduce of the stacked terms):

    M   = max_r m_r                                  (no gradient flows through it)
    S   = sum_r exp((m_r - M) / T) * S_r
    lse = M / T + log S                              log partition function of z = x / T
    H   = log S + sum_r exp((m_r - M) / T) * (B_r + (M - m_r) / T * S_r) / S
    log p_t = (x_t - M) / T - log S

Differences of logits are taken before dividing by T and before adding log S, so fp32 results
carry the rounding of the (small) result, not that of |x / T|. H = lse - E_p[z] =
log S + E_p[(M - x) / T]: both terms are >= 0, so the entropy has no cancellation. The
vocabulary itself is never gathered; only [b, s] tensors cross ranks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class VocabShard:
    """Where this rank's logits sit in the global vocabulary."""

    group: Optional[dist.ProcessGroup]  # None when tp == 1
    tp: int
    rank: int
    local_size: int  # V_local, the last dimension of the logits
    n_valid: int  # real (non-padding) local ids: they are [0, n_valid)

    @property
    def start(self) -> int:
        """Global id of local id 0."""
        return self.rank * self.local_size

    def local_targets(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(local index, owned) for global ids: local index is 0 where this rank does not own it."""
        local = tokens - self.start
        owned = (local >= 0) & (local < self.n_valid)
        return torch.where(owned, local, torch.zeros_like(local)), owned


def vocab_shard(local_size: int, tp_group: Optional[dist.ProcessGroup],
                vocab_size: Optional[int], what: str = "logits.shape[-1]") -> VocabShard:
    """The shard of this rank; `what` names the tensor dimension that gave `local_size`."""
    if tp_group is None:
        tp, rank = 1, 0
    else:
        if not dist.is_initialized():
            raise ValueError("tp_group was given but torch.distributed is not initialized")
        tp, rank = dist.get_world_size(tp_group), dist.get_rank(tp_group)
    padded = tp * local_size
    if vocab_size is None:
        vocab_size = padded
    if not isinstance(vocab_size, int) or not 0 < vocab_size <= padded:
        raise ValueError(f"vocab_size {vocab_size!r} must be an int in [1, tp * {what}] = "
                         f"[1, {tp} * {local_size}] = [1, {padded}]")
    n_valid = min(max(vocab_size - rank * local_size, 0), local_size)
    return VocabShard(group=tp_group if tp > 1 else None, tp=tp, rank=rank,
                      local_size=local_size, n_valid=n_valid)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 for bf16/fp16/fp32 inputs; float64 inputs stay float64 (gradcheck)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_options(temperature: float, chunk_size: Optional[int]) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")


def check_tokens(tokens: torch.Tensor, expected: tuple[int, int], source: str) -> None:
    """tokens must be integer ids of shape `expected` ([b, s], read from `source`)."""
    if tuple(tokens.shape) != tuple(expected):
        raise ValueError(f"tokens shape {tuple(tokens.shape)} does not match [b, s] = "
                         f"{tuple(expected)} from {source}")
    if tokens.is_floating_point() or tokens.is_complex() or tokens.dtype == torch.bool:
        raise ValueError(f"tokens must hold integer token ids, got dtype {tokens.dtype}")


@dataclass
class Combined:
    """Per-position results over the whole TP group, [...] each."""

    max: torch.Tensor  # M, the max logit (before / T)
    log_sumexp: torch.Tensor  # log S, S = sum_v exp((x_v - M) / T); lse = M / T + log S
    target: Optional[torch.Tensor]  # the target's logit x_t (before / T)
    entropy: Optional[torch.Tensor]


def combine(shard: VocabShard, m: torch.Tensor, s: torch.Tensor, target: Optional[torch.Tensor],
            b: Optional[torch.Tensor], temperature: float) -> Combined:
    """This rank's m_r, S_r, masked target logit and B_r -> the group's (module docstring)."""
    if shard.n_valid == 0:  # a rank holding only padding contributes nothing
        m = torch.full_like(m, float("-inf"))
        s = torch.zeros_like(s)
        b = None if b is None else torch.zeros_like(b)
    big_m = m
    if shard.group is not None:
        big_m = m.clone()
        dist.all_reduce(big_m, op=dist.ReduceOp.MAX, group=shard.group)
        scale = torch.exp((m - big_m) / temperature)
        if b is not None and shard.n_valid:
            b = b + (big_m - m) / temperature * s
        b = None if b is None else b * scale
        s = s * scale
    terms = [t for t in (s, target, b) if t is not None]
    if shard.group is not None:
        stacked = torch.stack(terms)
        dist.all_reduce(stacked, op=dist.ReduceOp.SUM, group=shard.group)
        terms = list(stacked.unbind(0))
    s = terms.pop(0)
    target = terms.pop(0) if target is not None else None
    log_s = torch.log(s)
    entropy = log_s + terms.pop(0) / s if b is not None else None
    return Combined(max=big_m, log_sumexp=log_s, target=target, entropy=entropy)


def pick_target(logits: torch.Tensor, local: torch.Tensor, owned: torch.Tensor,
                dtype: torch.dtype) -> torch.Tensor:
    """The logit at each position's target on the owning rank, 0 elsewhere: [...] in `dtype`."""
    x = logits.gather(-1, local.unsqueeze(-1)).squeeze(-1).to(dtype)
    return torch.where(owned, x, torch.zeros_like(x))
