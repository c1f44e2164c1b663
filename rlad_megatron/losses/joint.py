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

import inspect
import math

import torch
from torch import Tensor

from rlad_megatron.losses.aggregate import Count, aggregate
from rlad_megatron.losses.grpo import grpo_loss
from rlad_megatron.losses.metrics import stat
from rlad_megatron.losses.trrd import CLAMP_GRAD, clipped_surrogate_loss, trrd_loss

RL_LOSSES = {"trrd": trrd_loss, "grpo": grpo_loss}
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


def joint_loss(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, loss_mask: Tensor,
               distill_mask: Tensor, teacher_logprobs: Tensor | None = None,
               teacher_mask: Tensor | None = None, ref_logprobs: Tensor | None = None, *,
               rl: str = "trrd", rl_options: dict | None = None, distill: str = "ratio",
               weight: float = 1.0, importance_cap: float = 1.0, num_seqs: Count = None,
               num_tokens: Count = None, distill_num_seqs: Count = None,
               distill_num_tokens: Count = None) -> tuple[Tensor, dict[str, Tensor]]:
    """RL on the student's rows + weight * distillation on the selected teacher rows.

    Inputs [b, s] (position t holds token t; data/batch.py): logprobs lp (with grad), old_logprobs,
    teacher_logprobs lp_T (needed by rl="trrd" and by distill="ratio"),
    advantages [b] or [b, s] (teacher rows hold A_T), loss_mask (student rows' loss tokens),
    distill_mask (selected teacher rows' response tokens), teacher_mask and ref_logprobs as in
    trrd_loss. rl_options: the RL loss's keyword options (alpha, eps_low, eps_high,
    teacher_logratio_clamp, clamp_grad, agg, kl_beta, ...). Normalisers: see the module
    docstring (None -> this call's counts).
    Metrics: the RL loss's, plus loss/joint, joint/rl_term, joint/distill_term, distill/*.
    """
    if rl not in RL_LOSSES:
        raise ValueError(f"unknown rl loss {rl!r}; known: {sorted(RL_LOSSES)}")
    if distill not in DISTILL_LOSSES:
        raise ValueError(f"unknown distill loss {distill!r}; known: {list(DISTILL_LOSSES)}")
    if weight < 0 or not importance_cap > 0:
        raise ValueError(f"weight: {weight} must be >= 0 and importance_cap: {importance_cap} > 0")
    if distill_mask.shape != loss_mask.shape:
        raise ValueError(f"distill_mask: shape {tuple(distill_mask.shape)} != loss_mask "
                         f"{tuple(loss_mask.shape)}")
    opts = dict(rl_options or {})
    fn = RL_LOSSES[rl]
    given = {"old_logprobs": old_logprobs, "teacher_logprobs": teacher_logprobs,
             "advantages": advantages, "loss_mask": loss_mask, "teacher_mask": teacher_mask,
             "ref_logprobs": ref_logprobs}
    params = inspect.signature(fn).parameters
    rl_value, metrics = fn(logprobs, **{k: v for k, v in given.items() if k in params}, **opts,
                           num_seqs=num_seqs, num_tokens=num_tokens)

    mask = distill_mask.bool()
    agg = opts.get("agg", params["agg"].default)
    norms = {"num_seqs": distill_num_seqs, "num_tokens": distill_num_tokens}
    nll = -_masked(logprobs, mask)
    if distill == "nll":
        per_token = nll
    else:
        alpha = opts.get("alpha", 1.0) if rl == "trrd" else 1.0
        if teacher_logprobs is None:
            raise ValueError("distill 'ratio' needs teacher_logprobs (the importance weight)")
        per_token, ratio, w = distill_ratio_terms(
            logprobs, old_logprobs, teacher_logprobs, advantages, mask, alpha=alpha,
            eps_low=opts.get("eps_low", 0.2), eps_high=opts.get("eps_high", 0.28),
            teacher_logratio_clamp=opts.get("teacher_logratio_clamp", 1.0),
            clamp_grad=opts.get("clamp_grad", "detach"), importance_cap=importance_cap)
        metrics["distill/ratio_mean"] = stat(_masked(ratio, mask).sum())
        metrics["distill/is_weight_mean"] = stat(_masked(w, mask).sum())
    distill_value = aggregate(per_token, mask, agg, **norms)
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
