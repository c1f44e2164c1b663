"""TRRD: the GRPO clipped surrogate with the ratio anchored to a student-teacher mixture (Eq. 3-5).

    log r = alpha * (lp - lp_old) + (1 - alpha) * clamp(lp - lp_T, -c, c)        (Eq. 5 + App. B)
          = lp - log pi_mix,   log pi_mix = alpha * lp_old + (1 - alpha) * lp_T  (inside the clamp)
    loss  = -agg( min(r * A, clip(r, 1 - eps_low, 1 + eps_high) * A) )
            [+ beta * agg(KL(pi_S||pi_ref))]

alpha weights the OLD STUDENT: alpha = 1 is GRPO exactly, alpha -> 0 anchors to the teacher
(Eq. 3 and Appendix C; the sentence in section 4.1 has the endpoints reversed). The teacher only
moves the trust region; the direction of every update is the sign of A.

`ratio_loss` is the one implementation; `trrd_loss` and `grpo.grpo_loss` (alpha = 1, no teacher)
call it, so GRPO is TRRD's special case by construction.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from rlad_megatron.losses.aggregate import Count, aggregate, check_agg
from rlad_megatron.losses.diagnostics import count_stats, policy_stats, teacher_stats
from rlad_megatron.losses.kl import check_kl_estimator, kl_estimate
from rlad_megatron.losses.metrics import stat


class _StraightThroughClamp(torch.autograd.Function):
    """Forward: clamp(x, -c, c). Backward: the gradient of x (identity), also outside [-c, c]."""

    @staticmethod
    def forward(ctx, x: Tensor, bound: float) -> Tensor:
        return x.clamp(-bound, bound)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return grad, None


def detach_clamp(x: Tensor, bound: float) -> Tensor:
    """torch.clamp: zero gradient where |x| > bound (the gradient passes at |x| == bound)."""
    return torch.clamp(x, -bound, bound)


def straight_through_clamp(x: Tensor, bound: float) -> Tensor:
    """Clamped value, gradient of the unclamped x."""
    return _StraightThroughClamp.apply(x, bound)


CLAMP_GRAD: dict[str, Callable[[Tensor, float], Tensor]] = {
    "detach": detach_clamp,
    "straight_through": straight_through_clamp,
}


def trrd_log_ratio(logprobs: Tensor, old_logprobs: Tensor, teacher_logprobs: Tensor | None, *,
                   alpha: float, clamp: float, clamp_grad: str,
                   teacher_mask: Tensor | None = None) -> Tensor:
    """[b, s] log r = alpha*(lp - lp_old) + (1-alpha)*clamp(lp - lp_T, -c, c).

    Where teacher_mask == 0 (bool or 0/1 [b, s]), log r = lp - lp_old (the GRPO ratio, alpha = 1).
    teacher_logprobs None means GRPO and requires alpha == 1.
    """
    grpo = logprobs - old_logprobs
    if teacher_logprobs is None:
        assert alpha == 1.0, "trrd_log_ratio: no teacher_logprobs is GRPO, alpha must be 1"
        return grpo
    teacher = CLAMP_GRAD[clamp_grad](logprobs - teacher_logprobs, clamp)
    mixed = alpha * grpo + (1.0 - alpha) * teacher
    return mixed if teacher_mask is None else torch.where(teacher_mask.bool(), mixed, grpo)


def clipped_surrogate_loss(ratio: Tensor, advantages: Tensor, *, eps_low: float, eps_high: float,
                           dual_clip: float | None = None) -> Tensor:
    """[b, s] per-token loss -min(r*A, clip(r, 1-eps_low, 1+eps_high)*A).

    dual_clip c (verl's clip_ratio_c, > 1): for A < 0 the loss is bounded by -c*A.
    """
    unclipped = ratio * advantages
    clipped = ratio.clamp(1.0 - eps_low, 1.0 + eps_high) * advantages
    loss = -torch.minimum(unclipped, clipped)
    if dual_clip is None:
        return loss
    return torch.where(advantages < 0, torch.minimum(loss, -dual_clip * advantages), loss)


def _check_args(*, clamp_grad: str, agg: str, kl_estimator: str, kl_beta: float,
                ref_logprobs: Tensor | None) -> None:
    """The named choices (registry lookups) and the inputs the options need; the numeric ranges
    of the options are the config's (config/algorithms.py `validate`)."""
    if clamp_grad not in CLAMP_GRAD:
        raise ValueError(f"unknown clamp_grad {clamp_grad!r}; known: {sorted(CLAMP_GRAD)}")
    if kl_beta != 0.0 and ref_logprobs is None:
        raise ValueError(f"kl_beta: {kl_beta} needs ref_logprobs (got None)")
    check_agg(agg)
    check_kl_estimator(kl_estimator)


def check_shapes(loss_mask: Tensor, advantages: Tensor, **tensors: Tensor | None) -> None:
    """ValueError naming the first tensor that is not [b, s] like loss_mask (None is skipped), or
    advantages that are neither [b] nor [b, s]."""
    for name, t in tensors.items():
        if t is not None and t.shape != loss_mask.shape:
            raise ValueError(f"{name}: shape {tuple(t.shape)} != loss_mask "
                             f"{tuple(loss_mask.shape)}")
    if advantages.shape not in (loss_mask.shape[:1], loss_mask.shape):
        raise ValueError(f"advantages: shape {tuple(advantages.shape)} is neither [b] nor [b, s] "
                         f"of loss_mask {tuple(loss_mask.shape)}")


def ratio_loss(area: str, logprobs: Tensor, old_logprobs: Tensor,
               teacher_logprobs: Tensor | None, advantages: Tensor, loss_mask: Tensor, *,
               alpha: float, eps_low: float, eps_high: float, teacher_logratio_clamp: float,
               agg: str, teacher_mask: Tensor | None, clamp_grad: str, dual_clip: float | None,
               ref_logprobs: Tensor | None, kl_beta: float, kl_estimator: str,
               num_seqs: Count, num_tokens: Count) -> tuple[Tensor, dict[str, Tensor]]:
    """The shared body of trrd_loss and grpo_loss (see trrd_loss); `area` prefixes the metrics."""
    _check_args(clamp_grad=clamp_grad, agg=agg, kl_estimator=kl_estimator, kl_beta=kl_beta,
                ref_logprobs=ref_logprobs)
    check_shapes(loss_mask, advantages, logprobs=logprobs, old_logprobs=old_logprobs,
                  teacher_logprobs=teacher_logprobs, teacher_mask=teacher_mask,
                  ref_logprobs=ref_logprobs)
    mask = loss_mask.bool()

    def masked(t: Tensor | None) -> Tensor | None:  # padding may hold NaN: select, never multiply
        return None if t is None else torch.where(mask, t, torch.zeros_like(t))

    lp, old, teacher, ref = map(masked, (logprobs, old_logprobs, teacher_logprobs, ref_logprobs))
    adv = masked((advantages[:, None] if advantages.dim() == 1 else advantages).expand_as(lp))
    anchored = mask if teacher_mask is None else mask & teacher_mask.bool()

    log_r = trrd_log_ratio(lp, old, teacher, alpha=alpha, clamp=teacher_logratio_clamp,
                           clamp_grad=clamp_grad, teacher_mask=anchored)
    ratio = torch.exp(log_r)
    per_token = clipped_surrogate_loss(ratio, adv, eps_low=eps_low, eps_high=eps_high,
                                       dual_clip=dual_clip)
    norms = {"num_seqs": num_seqs, "num_tokens": num_tokens}
    loss = pg_loss = aggregate(per_token, mask, agg, **norms)

    metrics = {**count_stats(mask), f"{area}/pg_loss": stat(pg_loss),
               **policy_stats(area, ratio, adv, mask, eps_low=eps_low, eps_high=eps_high,
                              dual_clip=dual_clip)}
    if ref is not None:
        kl = kl_estimate(lp, ref, kl_estimator)
        metrics["kl/ref_mean"] = stat(torch.where(mask, kl, torch.zeros_like(kl)).sum())
        if kl_beta != 0.0:
            loss = pg_loss + kl_beta * aggregate(kl, mask, agg, **norms)
    if teacher is not None:
        metrics.update(teacher_stats(lp, teacher, mask, anchored, clamp=teacher_logratio_clamp))
    metrics[f"loss/{area}"] = stat(loss)
    return loss, metrics


def trrd_loss(logprobs: Tensor, old_logprobs: Tensor, teacher_logprobs: Tensor,
              advantages: Tensor, loss_mask: Tensor, *, alpha: float, eps_low: float,
              eps_high: float, teacher_logratio_clamp: float, agg: str, clamp_grad: str,
              dual_clip: float | None, kl_beta: float, kl_estimator: str,
              teacher_mask: Tensor | None = None, ref_logprobs: Tensor | None = None,
              num_seqs: Count = None, num_tokens: Count = None
              ) -> tuple[Tensor, dict[str, Tensor]]:
    """RLAD's TRRD loss (paper Eq. 4-5, Appendix B clamp) -> (scalar loss, metrics).

        log r = alpha*(lp - lp_old) + (1-alpha)*clamp(lp - lp_T, -c, c),  c = teacher_logratio_clamp
        loss  = -agg(min(r*A, clip(r, 1-eps_low, 1+eps_high)*A)) + kl_beta*agg(KL_est(lp, lp_ref))

    Inputs (position t holds the value of token t; see data/batch.py):
        logprobs lp [b, s] fp32 (with grad), old_logprobs lp_old [b, s] fp32,
        teacher_logprobs lp_T [b, s] fp32, advantages A [b] or [b, s], loss_mask [b, s] bool/0-1,
        teacher_mask [b, s] bool/0-1 or None (all 1): where 0 the token uses the GRPO ratio,
        ref_logprobs [b, s] fp32 or None (needed when kl_beta != 0; KL metric when given).
    Options (no defaults here: loss.trrd in config/algorithms.py holds them and their
    ranges): clamp_grad "detach" (torch.clamp: no gradient through the teacher term outside
    [-c, c]) or "straight_through" (clamped value, unclamped gradient); dual_clip c > 1 bounds the
    A < 0 loss by -c*A; kl_estimator "k1" | "k2" | "k3" (losses/kl.py).
    Aggregation (losses/aggregate.py): agg "seq_mean_token_mean" | "token_mean". The loss is this
    call's SUM contribution over the GLOBAL normaliser num_seqs (seq_mean_token_mean) or
    num_tokens (token_mean); None -> this call's counts. Summing the losses of micro-batches and
    DP ranks called with the global normalisers equals one call on the whole batch.
    Metrics: sufficient statistics keyed as in losses/metrics.py (area "trrd", "teacher/", "kl/").
    Positions with loss_mask == 0 are ignored, NaN included.
    """
    return ratio_loss("trrd", logprobs, old_logprobs, teacher_logprobs, advantages, loss_mask,
                      alpha=alpha, eps_low=eps_low, eps_high=eps_high,
                      teacher_logratio_clamp=teacher_logratio_clamp, agg=agg,
                      teacher_mask=teacher_mask, clamp_grad=clamp_grad, dual_clip=dual_clip,
                      ref_logprobs=ref_logprobs, kl_beta=kl_beta, kl_estimator=kl_estimator,
                      num_seqs=num_seqs, num_tokens=num_tokens)
