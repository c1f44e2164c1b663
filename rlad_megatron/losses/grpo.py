"""GRPO (paper Eq. 1): the clipped surrogate on r = pi_S / pi_old; TRRD with alpha = 1."""

from __future__ import annotations

from torch import Tensor

from rlad_megatron.losses.aggregate import Count
from rlad_megatron.losses.trrd import ratio_loss


def grpo_loss(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, loss_mask: Tensor, *,
              eps_low: float = 0.2, eps_high: float = 0.28, agg: str = "seq_mean_token_mean",
              dual_clip: float | None = None, ref_logprobs: Tensor | None = None,
              kl_beta: float = 0.0, kl_estimator: str = "k3", num_seqs: Count = None,
              num_tokens: Count = None) -> tuple[Tensor, dict[str, Tensor]]:
    """GRPO loss -> (scalar loss, metrics); the same code as trrd_loss with alpha = 1.

        r    = exp(lp - lp_old)
        loss = -agg(min(r*A, clip(r, 1-eps_low, 1+eps_high)*A)) + kl_beta*agg(KL_est(lp, lp_ref))

    Inputs: logprobs lp [b, s] fp32 (with grad), old_logprobs lp_old [b, s] fp32, advantages A [b]
    or [b, s], loss_mask [b, s], ref_logprobs [b, s] or None. Options, aggregation contract
    (SUM contribution / GLOBAL num_seqs or num_tokens; None -> local counts) and metrics (area
    "grpo") are those of trrd_loss.
    """
    return ratio_loss("grpo", logprobs, old_logprobs, None, advantages, loss_mask, alpha=1.0,
                      eps_low=eps_low, eps_high=eps_high, teacher_logratio_clamp=1.0, agg=agg,
                      teacher_mask=None, clamp_grad="detach", dual_clip=dual_clip,
                      ref_logprobs=ref_logprobs, kl_beta=kl_beta, kl_estimator=kl_estimator,
                      num_seqs=num_seqs, num_tokens=num_tokens)
