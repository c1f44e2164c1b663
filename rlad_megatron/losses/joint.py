"""The joint objective of selective imitation with teacher trajectories (the third step of the
three-step reading: teacher trajectories, selective gates, this joint loss):

    total = L_RL(student rows)  +  lambda * L_distill(selected teacher rows)

L_RL is the algorithm's own loss (trrd_loss or grpo_loss) on loss_mask, which covers the
student's rows only. L_distill runs on distill_mask: the response tokens of the teacher rows that
passed the gates (data/selection.py `gate_trajectories`). Two distillation terms:

  "ratio"  the RL loss's clipped surrogate on the teacher's tokens, with the teacher row's
           advantage A_T:
               log r = alpha (lp - lp_old) + (1 - alpha) clamp(lp - lp_T, -c, c)   (GRPO: alpha = 1)
               per token   w * -min(r A_T, clip(r, 1 - eps_low, 1 + eps_high) A_T)
               w = min((pi_old / pi_T)^alpha, importance_cap)   (no gradient)
           A teacher row is off-policy: its tokens were drawn from pi_T, while the surrogate's
           ratio compares pi_S with the anchor pi_mix = pi_old^alpha pi_T^(1-alpha). The weight
           pi_mix / pi_T = (pi_old / pi_T)^alpha moves each token from the behaviour policy to the
           anchor, and is truncated at importance_cap (truncated importance sampling, as V-trace):
           tokens the student would rarely produce count less, never more than the cap. The clip
           bounds the step on teacher tokens as it does on the student's; with alpha = 0 the
           ratio is pi_S / pi_T, the exact off-policy PPO ratio, and w = 1.
  "nll"    -lp on the teacher's tokens (behaviour cloning of the selected trajectories; the
           advantage only selects).

Aggregation: each term uses the RL loss's `agg` over its own mask with its own GLOBAL normalisers
(num_seqs / num_tokens over loss_mask, distill_num_seqs / distill_num_tokens over distill_mask),
so the sum over micro-batches and DP ranks is the whole batch's loss, as for every loss here
(losses/aggregate.py). A batch without selected teacher rows contributes exactly the RL loss.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from rlad_megatron.losses.aggregate import Count, aggregate
from rlad_megatron.losses.metrics import stat
from rlad_megatron.losses.trrd import CLAMP_GRAD, clipped_surrogate_loss

DISTILL_LOSSES = ("ratio", "nll")


def _masked(t: Tensor | None, mask: Tensor) -> Tensor | None:
    return None if t is None else torch.where(mask, t, torch.zeros_like(t))


def distill_ratio_terms(logprobs: Tensor, old_logprobs: Tensor, teacher_logprobs: Tensor,
                        advantages: Tensor, distill_mask: Tensor, *, alpha: float, eps_low: float,
                        eps_high: float, teacher_logratio_clamp: float, clamp_grad: str,
                        importance_cap: float) -> tuple[Tensor, Tensor, Tensor]:
    """[b, s] per-token loss w * surrogate, the ratio r and the weight w (module docstring)."""
    mask = distill_mask.bool()
    lp, old, teacher = (_masked(t, mask) for t in (logprobs, old_logprobs, teacher_logprobs))
    adv = _masked((advantages[:, None] if advantages.dim() == 1 else advantages).expand_as(lp),
                  mask)
    log_r = alpha * (lp - old)
    if alpha < 1.0:
        log_r = log_r + (1.0 - alpha) * CLAMP_GRAD[clamp_grad](lp - teacher,
                                                               teacher_logratio_clamp)
    ratio = torch.exp(log_r)
    log_w = (alpha * (old - teacher)).detach()
    weight = torch.exp(torch.clamp(log_w, max=math.log(importance_cap)))
    per_token = weight * clipped_surrogate_loss(ratio, adv, eps_low=eps_low, eps_high=eps_high)
    return per_token, ratio.detach(), weight


def joint_loss(logprobs: Tensor, old_logprobs: Tensor, teacher_logprobs: Tensor | None,
               advantages: Tensor, distill_mask: Tensor, *, rl: tuple[Tensor, dict[str, Tensor]],
               distill: str, weight: float, importance_cap: float, agg: str, alpha: float,
               eps_low: float, eps_high: float, teacher_logratio_clamp: float, clamp_grad: str,
               distill_num_seqs: Count = None, distill_num_tokens: Count = None
               ) -> tuple[Tensor, dict[str, Tensor]]:
    """rl + weight * distillation on the selected teacher rows -> (scalar loss, metrics).

    rl: the RL loss's (value, metrics) on the student's rows (trrd_loss or grpo_loss over
    loss_mask; losses/bound.py JointLoss calls it). Inputs [b, s] (position t holds token t;
    data/batch.py): logprobs lp (with grad), old_logprobs, teacher_logprobs lp_T (needed by
    distill="ratio"), advantages [b] or [b, s] (teacher rows hold A_T), distill_mask (selected
    teacher rows' response tokens). Options: distill "ratio" | "nll", weight (lambda),
    importance_cap, and the RL loss's own agg, alpha (1 for GRPO), eps_low, eps_high,
    teacher_logratio_clamp and clamp_grad, which the "ratio" term reuses (module docstring);
    imitation.* and loss.<rl> hold their defaults and ranges (config/algorithms.py).
    Normalisers: distill_num_seqs / distill_num_tokens over distill_mask (None -> this call's).
    Metrics: the RL loss's, plus loss/joint, joint/rl_term, joint/distill_term, distill/*.
    """
    if distill not in DISTILL_LOSSES:
        raise ValueError(f"unknown distill loss {distill!r}; known: {list(DISTILL_LOSSES)}")
    if distill_mask.shape != logprobs.shape:
        raise ValueError(f"distill_mask: shape {tuple(distill_mask.shape)} != logprobs "
                         f"{tuple(logprobs.shape)}")
    rl_value, metrics = rl[0], dict(rl[1])
    mask = distill_mask.bool()
    nll = -_masked(logprobs, mask)
    if distill == "nll":
        per_token = nll
    else:
        if teacher_logprobs is None:
            raise ValueError("distill 'ratio' needs teacher_logprobs (the importance weight)")
        per_token, ratio, w = distill_ratio_terms(
            logprobs, old_logprobs, teacher_logprobs, advantages, mask, alpha=alpha,
            eps_low=eps_low, eps_high=eps_high, teacher_logratio_clamp=teacher_logratio_clamp,
            clamp_grad=clamp_grad, importance_cap=importance_cap)
        metrics["distill/ratio_mean"] = stat(_masked(ratio, mask).sum())
        metrics["distill/is_weight_mean"] = stat(_masked(w, mask).sum())
    distill_value = aggregate(per_token, mask, agg, num_seqs=distill_num_seqs,
                              num_tokens=distill_num_tokens)
    total = rl_value + weight * distill_value
    metrics.update({
        "distill/tokens": stat(mask.sum()), "distill/seqs": stat(mask.any(dim=-1).sum()),
        "distill/nll_mean": stat(nll.sum()),
        "joint/rl_term": stat(rl_value), "joint/distill_term": stat(weight * distill_value),
        "loss/joint": stat(total)})
    return total, metrics


def distill_share(metrics: dict[str, float]) -> float:
    """|distillation term| / (|RL term| + |distillation term|) of finalised metrics (NaN: both
    0)."""
    rl, d = abs(metrics.get("joint/rl_term", 0.0)), abs(metrics.get("joint/distill_term", 0.0))
    return d / (rl + d) if rl + d > 0 else math.nan
