"""KDRL baseline (paper Eq. 2): GRPO plus beta * KL(pi_S || pi_T) on the student's own tokens."""

from __future__ import annotations

import torch
from torch import Tensor

from rlad_megatron.losses.aggregate import Count, aggregate
from rlad_megatron.losses.diagnostics import teacher_stats
from rlad_megatron.losses.grpo import grpo_loss
from rlad_megatron.losses.kl import kl_estimate
from rlad_megatron.losses.metrics import stat
from rlad_megatron.losses.trrd import check_shapes


def kdrl_beta(step: int, beta_init: float, beta_min: float, anneal_steps: int) -> float:
    """Linear anneal: beta(step) = beta_init + (beta_min - beta_init) * min(step / anneal_steps, 1).

    Reaches beta_min at step == anneal_steps and stays there; anneal_steps == 0 gives beta_min
    from the start; beta_init == beta_min is a constant beta. anneal_steps >= 0 is the config's
    range (loss.kdrl.anneal_steps, imitation.weight_steps: their sections' `validate`).
    """
    if step < 0:
        raise ValueError(f"step: {step} must be >= 0")
    progress = 1.0 if anneal_steps == 0 else min(step / anneal_steps, 1.0)
    return beta_init + (beta_min - beta_init) * progress


def kdrl_loss(logprobs: Tensor, old_logprobs: Tensor, teacher_logprobs: Tensor,
              advantages: Tensor, loss_mask: Tensor, *, beta: float, kl_estimator: str,
              eps_low: float, eps_high: float, agg: str, teacher_mask: Tensor | None = None,
              num_seqs: Count = None, num_tokens: Count = None
              ) -> tuple[Tensor, dict[str, Tensor]]:
    """KDRL loss -> (scalar loss, metrics).

        loss = grpo_loss(lp, lp_old, A) + beta * agg(KL_est(lp, lp_T) * teacher_mask)

    KL_est is a per-token estimator of the reverse KL(pi_S || pi_T) on the student's sampled
    tokens (losses/kl.py; loss.kdrl's default is "k2", as in KDRL); it ignores the advantage.
    Tokens with teacher_mask == 0 get no KL term (they still count in the normalisers). beta >= 0
    is a scalar: loss.kdrl builds it with kdrl_beta(step, ...), the annealed schedule. Options
    and their ranges are loss.kdrl's (config/algorithms.py).
    Inputs: logprobs lp [b, s] fp32 (with grad), old_logprobs, teacher_logprobs lp_T [b, s] fp32,
    advantages A [b] or [b, s], loss_mask, teacher_mask [b, s] bool/0-1 or None (all 1).
    Aggregation contract as in trrd_loss: SUM contribution / GLOBAL num_seqs or num_tokens.
    Metrics: those of grpo_loss (area "grpo": loss/grpo is the policy part), plus loss/kdrl,
    kl/teacher_mean and the teacher/ statistics.
    """
    check_shapes(loss_mask, advantages, teacher_logprobs=teacher_logprobs,
                 teacher_mask=teacher_mask)
    # the policy part: GRPO without its reference KL (kl_beta 0, so kl_estimator is not used)
    pg_loss, metrics = grpo_loss(logprobs, old_logprobs, advantages, loss_mask, eps_low=eps_low,
                                 eps_high=eps_high, agg=agg, dual_clip=None, kl_beta=0.0,
                                 kl_estimator=kl_estimator, num_seqs=num_seqs,
                                 num_tokens=num_tokens)
    mask = loss_mask.bool()
    anchored = mask if teacher_mask is None else mask & teacher_mask.bool()
    zeros = torch.zeros_like(logprobs)
    # every estimator is exactly 0 where lp == lp_T, so zeroing both inputs off the mask zeroes
    # the KL there without multiplying a possible NaN (padding) by 0
    lp = torch.where(anchored, logprobs, zeros)
    teacher = torch.where(anchored, teacher_logprobs, zeros)
    kl = kl_estimate(lp, teacher, kl_estimator)
    loss = pg_loss + beta * aggregate(kl, mask, agg, num_seqs=num_seqs, num_tokens=num_tokens)

    metrics.update(teacher_stats(torch.where(mask, logprobs, zeros),
                                 torch.where(mask, teacher_logprobs, zeros), mask, anchored))
    metrics["kl/teacher_mean"] = stat(kl.sum())
    metrics["loss/kdrl"] = stat(loss)
    return loss, metrics
