"""Selective imitation, in both readings of RLAD.

1. The paper's (`select_teacher_tokens`): which tokens of the student's rollouts anchor their TRRD
   ratio to the teacher (the teacher mask).
2. The three-step reading's (`gate_trajectories`; teacher trajectories, selective gates, a joint
   loss): which teacher trajectories are imitated, by three gates (further below).

After rollout, scoring and the teacher pass, for each sequence i and loss token t:

    gap_it       = lp_T - lp_old                       per-token teacher gap        [b, s]
    alignment_i  = mean_t over loss tokens of gap_it                                [b]
    advantage_i  = A_i (for [b, s] advantages: their mean over loss tokens)         [b]

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
    token_gap: Tensor | None      # [b, s] fp32: lp_T - lp_old, 0 where loss_mask == 0
    seq_alignment: Tensor | None  # [b] fp32: mean of token_gap over the sequence's loss tokens
                                  # (both None without lp_old: config/on_policy.py)
    seq_advantage: Tensor  # [b] fp32
    seq_selected: Tensor   # [b] bool: the policy's gate
    selected_frac: float   # teacher_mask mean over loss tokens (NaN without loss tokens)


def paper_policy(advantage: Tensor, alignment: Tensor, *, tau_adv: float,
                 tau_align: float) -> Tensor:
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


def both_policy(advantage: Tensor, alignment: Tensor, *, tau_adv: float,
                tau_align: float) -> Tensor:
    """[b] |A_i| >= tau_adv and alignment_i >= tau_align."""
    return (advantage.abs() >= tau_adv) & (alignment >= tau_align)


SELECTION_POLICIES: dict[str, Callable[..., Tensor]] = {
    "paper": paper_policy,
    "advantage": advantage_policy,
    "alignment": alignment_policy,
    "both": both_policy,
}


def select_teacher_tokens(advantages: Tensor, old_logprobs: Tensor | None,
                          teacher_logprobs: Tensor, loss_mask: Tensor, *, policy: str = "paper",
                          tau_adv: float = 0.0, tau_align: float = 0.0) -> Selection:
    """advantages [b] or [b, s], old_logprobs lp_old and teacher_logprobs lp_T [b, s] fp32,
    loss_mask [b, s] -> Selection (see the module docstring for the policies). old_logprobs None
    (the on-policy update, config/on_policy.py): only the policies that do not read the alignment
    (paper, advantage); the gap statistics are then None."""
    if policy not in SELECTION_POLICIES:
        raise ValueError(f"unknown selection policy {policy!r}; known: "
                         f"{sorted(SELECTION_POLICIES)}")
    mask = loss_mask.bool()
    tokens = mask.sum(dim=-1)
    denom = tokens.clamp(min=1).to(teacher_logprobs.dtype)
    gap = alignment = None
    if old_logprobs is not None:
        gap = torch.where(mask, teacher_logprobs - old_logprobs, torch.zeros_like(old_logprobs))
        alignment = gap.sum(dim=-1) / denom
    elif policy not in ("paper", "advantage"):
        raise ValueError(f"selection policy {policy!r} reads lp_T - lp_old, but the batch has no "
                         "old log-probs (train.old_logprobs)")
    if advantages.dim() == 2:
        advantages = torch.where(mask, advantages, torch.zeros_like(advantages)).sum(-1) / denom
    gate = SELECTION_POLICIES[policy](advantages, alignment, tau_adv=tau_adv, tau_align=tau_align)
    teacher_mask = gate[:, None] & mask
    n = int(mask.sum())
    frac = float(teacher_mask.sum()) / n if n else float("nan")
    return Selection(policy=policy, teacher_mask=teacher_mask, token_gap=gap,
                     seq_alignment=alignment, seq_advantage=advantages, seq_selected=gate,
                     selected_frac=frac)


# ---- 2. Teacher trajectories: three gates -----------------------------------------------------
#
# For each teacher row i (rollout.teacher_samples per prompt), over its response tokens t:
#
#   aligned        the student can follow it
#                    "gap":    mean_t (lp_T - lp_S) <= tau_align   (nats per token)
#                    "loglik": mean_t lp_S          >= tau_align
#                  (lp_S: the student's log-prob of the teacher's token, lp_T: the teacher's)
#   raises reward  A_i >= tau_adv  (the trajectory's advantage, data/advantages.py)
#   not_exploring  the student's own group on the prompt succeeds (reward >= success_reward)
#                  at a rate < tau_success: prompts the student already solves stay with RL
#
# A gate switched off passes every row; a row is imitated when every gate passes.

GATES = ("aligned", "raises_reward", "not_exploring")
ALIGN_METRICS = ("gap", "loglik")
"""How the aligned gate measures a teacher trajectory (see above)."""


@dataclass(frozen=True)
class TrajectoryGates:
    """The gates over one rank's batch (rows as in the batch; student rows never pass)."""

    teacher_rows: Tensor    # [b] bool
    passed: dict            # gate name (GATES) -> [b] bool, False on student rows
    selected: Tensor        # [b] bool: teacher rows passing every switched-on gate
    alignment: Tensor       # [b] fp32: the aligned gate's metric (0 on student rows)
    group_success: Tensor   # [b] fp32: the row's student group success rate

    def pass_rates(self) -> dict[str, float]:
        """Fraction of teacher rows passing each gate and all of them (NaN without teacher rows)."""
        n = int(self.teacher_rows.sum())
        rates = {name: float(mask.sum()) / n if n else float("nan")
                 for name, mask in self.passed.items()}
        rates["selected"] = float(self.selected.sum()) / n if n else float("nan")
        return rates


def group_success_rate(rewards: Tensor, group_ids: Tensor, student_rows: Tensor, *,
                       success_reward: float = 1.0) -> Tensor:
    """[b] per row: the fraction of its group's STUDENT rows with reward >= success_reward."""
    _, inverse = torch.unique(group_ids, return_inverse=True)
    k = int(inverse.max()) + 1 if inverse.numel() else 0
    w = student_rows.to(torch.float64)
    hits = torch.zeros(k, dtype=torch.float64, device=w.device).index_add_(
        0, inverse, w * (rewards.to(torch.float64) >= success_reward))
    count = torch.zeros(k, dtype=torch.float64, device=w.device).index_add_(0, inverse, w)
    return (hits / count.clamp(min=1))[inverse].to(torch.float32)


def gate_trajectories(*, teacher_rows: Tensor, group_ids: Tensor, rewards: Tensor,
                      advantages: Tensor, old_logprobs: Tensor, teacher_logprobs: Tensor,
                      response_mask: Tensor, align_metric: str = "gap", tau_align: float = 1.0,
                      tau_adv: float = 0.1, tau_success: float = 0.5,
                      success_reward: float = 1.0, use_aligned: bool = True,
                      use_advantage: bool = True, use_explore: bool = True) -> TrajectoryGates:
    """The three gates (module comment above) for teacher_rows [b] bool, group_ids, rewards and
    advantages [b], old_logprobs lp_S and teacher_logprobs lp_T [b, s], response_mask [b, s]."""
    if align_metric not in ALIGN_METRICS:
        raise ValueError(f"unknown align_metric {align_metric!r}; known: "
                         f"{', '.join(ALIGN_METRICS)}")
    teacher_rows = teacher_rows.bool()
    mask = response_mask.bool()
    denom = mask.sum(-1).clamp(min=1).to(torch.float32)
    lp_s = torch.where(mask, old_logprobs, torch.zeros_like(old_logprobs)).sum(-1) / denom
    if align_metric == "gap":
        lp_t = torch.where(mask, teacher_logprobs, torch.zeros_like(teacher_logprobs)).sum(-1)
        alignment = lp_t / denom - lp_s
        aligned = alignment <= tau_align
    else:
        alignment = lp_s
        aligned = alignment >= tau_align
    success = group_success_rate(rewards, group_ids, ~teacher_rows, success_reward=success_reward)
    checks = {"aligned": (use_aligned, aligned),
              "raises_reward": (use_advantage, advantages >= tau_adv),
              "not_exploring": (use_explore, success < tau_success)}
    passed = {name: teacher_rows & (gate if on else torch.ones_like(teacher_rows))
              for name, (on, gate) in checks.items()}
    selected = teacher_rows.clone()
    for gate in passed.values():
        selected &= gate
    return TrajectoryGates(teacher_rows=teacher_rows, passed=passed, selected=selected,
                           alignment=torch.where(teacher_rows, alignment,
                                                 torch.zeros_like(alignment)),
                           group_success=success)
