"""Selective imitation: which tokens anchor their TRRD ratio to the teacher (the teacher mask).

After rollout, scoring and the teacher pass, for each sequence i and response token t:

    gap_it       = lp_T - lp_old                       per-token teacher gap        [b, s]
    alignment_i  = mean_t over response tokens of gap_it                            [b]
    advantage_i  = A_i (for [b, s] advantages: their mean over response tokens)     [b]

A policy turns (advantage_i, alignment_i) into a per-sequence gate; the teacher mask is the gate
on the sequence's loss tokens. The loss uses the GRPO ratio (alpha = 1) where the mask is 0.

    paper      anchor everywhere: selectivity comes from the clipped geometry alone (the paper)
    advantage  anchor where |A_i| >= tau_adv
    alignment  anchor where alignment_i >= tau_align
    both       both conditions
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor


@dataclass(frozen=True)
class Selection:
    """The teacher mask and the statistics it was chosen from (rows as in the batch)."""

    policy: str
    teacher_mask: Tensor   # [b, s] bool: 1 where the token's ratio is anchored to the teacher
    token_gap: Tensor      # [b, s] fp32: lp_T - lp_old, 0 where loss_mask == 0
    seq_alignment: Tensor  # [b] fp32: mean of token_gap over the sequence's loss tokens
    seq_advantage: Tensor  # [b] fp32
    seq_selected: Tensor   # [b] bool: the policy's gate
    selected_frac: float   # teacher_mask mean over loss tokens (NaN without loss tokens)


def paper_policy(advantage: Tensor, alignment: Tensor, *, tau_adv: float, tau_align: float) -> Tensor:
    """[b] all True."""
    return torch.ones_like(advantage, dtype=torch.bool)


def advantage_policy(advantage: Tensor, alignment: Tensor, *, tau_adv: float,
                     tau_align: float) -> Tensor:
    """[b] |A_i| >= tau_adv."""
    return advantage.abs() >= tau_adv


def alignment_policy(advantage: Tensor, alignment: Tensor, *, tau_adv: float,
                     tau_align: float) -> Tensor:
    """[b] alignment_i >= tau_align."""
    return alignment >= tau_align


def both_policy(advantage: Tensor, alignment: Tensor, *, tau_adv: float, tau_align: float) -> Tensor:
    """[b] |A_i| >= tau_adv and alignment_i >= tau_align."""
    return (advantage.abs() >= tau_adv) & (alignment >= tau_align)


SELECTION_POLICIES: dict[str, Callable[..., Tensor]] = {
    "paper": paper_policy,
    "advantage": advantage_policy,
    "alignment": alignment_policy,
    "both": both_policy,
}


def select_teacher_tokens(advantages: Tensor, old_logprobs: Tensor, teacher_logprobs: Tensor,
                          loss_mask: Tensor, *, policy: str = "paper", tau_adv: float = 0.0,
                          tau_align: float = 0.0) -> Selection:
    """advantages [b] or [b, s], old_logprobs lp_old and teacher_logprobs lp_T [b, s] fp32,
    loss_mask [b, s] -> Selection (see the module docstring for the policies)."""
    if policy not in SELECTION_POLICIES:
        raise ValueError(f"unknown selection policy {policy!r}; known: {sorted(SELECTION_POLICIES)}")
    mask = loss_mask.bool()
    tokens = mask.sum(dim=-1)
    denom = tokens.clamp(min=1).to(old_logprobs.dtype)
    gap = torch.where(mask, teacher_logprobs - old_logprobs, torch.zeros_like(old_logprobs))
    alignment = gap.sum(dim=-1) / denom
    if advantages.dim() == 2:
        advantages = torch.where(mask, advantages, torch.zeros_like(advantages)).sum(-1) / denom
    gate = SELECTION_POLICIES[policy](advantages, alignment, tau_adv=tau_adv, tau_align=tau_align)
    teacher_mask = gate[:, None] & mask
    n = int(mask.sum())
    frac = float(teacher_mask.sum()) / n if n else float("nan")
    return Selection(policy=policy, teacher_mask=teacher_mask, token_gap=gap,
                     seq_alignment=alignment, seq_advantage=advantages, seq_selected=gate,
                     selected_frac=frac)
