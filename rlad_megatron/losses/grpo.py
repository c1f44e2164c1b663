"""GRPO (paper Eq. 1): the clipped surrogate on r = pi_S / pi_old; TRRD with alpha = 1."""

from __future__ import annotations

from torch import Tensor

from rlad_megatron.losses.aggregate import Count
from rlad_megatron.losses.trrd import ratio_loss


def grpo_loss(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, loss_mask: Tensor, *,
              eps_low: float, eps_high: float, agg: str, dual_clip: float | None, kl_beta: float,
              kl_estimator: str, ref_logprobs: Tensor | None = None, num_seqs: Count = None,
              num_tokens: Count = None) -> tuple[Tensor, dict[str, Tensor]]:
    """GRPO loss -> (scalar loss, metrics); the same code as trrd_loss with alpha = 1.

        r    = exp(lp - lp_old)
        loss = -agg(min(r*A, clip(r, 1-eps_low, 1+eps_high)*A)) + kl_beta*agg(KL_est(lp, lp_ref))

    Inputs: logprobs lp [b, s] fp32 (with grad), old_logprobs lp_old [b, s] fp32, advantages A [b]
    or [b, s], loss_mask [b, s], ref_logprobs [b, s] or None. Options (loss.grpo holds their
    defaults and ranges), aggregation contract (SUM contribution / GLOBAL num_seqs or num_tokens;
    None -> local counts) and metrics (area "grpo") are those of trrd_loss.
    """
    return ratio_loss("grpo", logprobs, old_logprobs, None, advantages, loss_mask, alpha=1.0,
                      eps_low=eps_low, eps_high=eps_high, teacher_logratio_clamp=1.0, agg=agg,
                      teacher_mask=None, clamp_grad="detach", dual_clip=dual_clip,
                      ref_logprobs=ref_logprobs, kl_beta=kl_beta, kl_estimator=kl_estimator,
                      num_seqs=num_seqs, num_tokens=num_tokens)
