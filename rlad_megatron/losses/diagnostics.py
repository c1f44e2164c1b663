"""Per-step diagnostics of the clipped ratio and of the teacher, and a guard on teacher log-probs.

The *_stats functions return sufficient statistics (counts, sums, min, max over loss tokens) keyed
as in losses/metrics.py, which also says how they reduce and finalise. All inputs are [b, s];
positions with loss_mask == 0 are ignored (selected away, so NaN padding does not leak).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from rlad_megatron.losses.metrics import stat


def _masked_sum(values: Tensor, mask: Tensor) -> Tensor:
    return stat(torch.where(mask, values, torch.zeros_like(values)).sum())


def count_stats(loss_mask: Tensor) -> dict[str, Tensor]:
    """count/tokens (loss tokens) and count/seqs (rows with at least one loss token)."""
    mask = loss_mask.bool()
    return {"count/tokens": stat(mask.sum()), "count/seqs": stat(mask.any(dim=-1).sum())}


def policy_stats(area: str, ratio: Tensor, advantages: Tensor, loss_mask: Tensor, *,
                 eps_low: float, eps_high: float, dual_clip: float | None) -> dict[str, Tensor]:
    """Clip counts by bound and sign of A, dual-clip count, ratio sum / min / max.

    ratio r [b, s] (the ratio the surrogate clips), advantages [b, s] (broadcast), loss_mask [b, s].
    high: r > 1 + eps_high, low: r < 1 - eps_low; pos: A > 0, neg: A < 0 (A == 0 is neither).
    Only high_pos and low_neg are clipped (flat surrogate, no gradient); high_neg and low_pos
    are out of the trust region but keep the unclipped branch. dual: A < 0 and r > dual_clip.
    """
    mask = loss_mask.bool()
    r = ratio.detach()
    high, low = r > 1.0 + eps_high, r < 1.0 - eps_low
    pos, neg = advantages > 0, advantages < 0
    dual = neg & (r > dual_clip) if dual_clip is not None else torch.zeros_like(mask)
    inf = torch.full_like(r, math.inf)
    return {
        f"{area}/clip_frac_high_pos": stat((mask & high & pos).sum()),
        f"{area}/clip_frac_low_neg": stat((mask & low & neg).sum()),
        f"{area}/clip_frac_high_neg": stat((mask & high & neg).sum()),
        f"{area}/clip_frac_low_pos": stat((mask & low & pos).sum()),
        f"{area}/dual_clip_frac": stat((mask & dual).sum()),
        f"{area}/ratio_mean": _masked_sum(r, mask),
        f"{area}/ratio_min": stat(torch.where(mask, r, inf).min()),
        f"{area}/ratio_max": stat(torch.where(mask, r, -inf).max()),
    }


def teacher_stats(logprobs: Tensor, teacher_logprobs: Tensor, loss_mask: Tensor,
                  teacher_mask: Tensor, *, clamp: float | None = None) -> dict[str, Tensor]:
    """Selected fraction, teacher log-prob, student-teacher log-ratio, and (when `clamp` is given)
    the count of anchored tokens where the teacher clamp is active: |lp - lp_T| > clamp.

    logprobs lp, teacher_logprobs lp_T [b, s]; teacher_mask [b, s] bool (1: token anchored).
    """
    mask = loss_mask.bool()
    anchored = mask & teacher_mask.bool()
    gap = logprobs.detach() - teacher_logprobs.detach()
    out = {
        "teacher/selected_frac": stat(anchored.sum()),
        "teacher/logprob_mean": _masked_sum(teacher_logprobs.detach(), mask),
        "teacher/logratio_mean": _masked_sum(gap, mask),
    }
    if clamp is not None:
        out["teacher/clamp_frac"] = stat((anchored & (gap.abs() > clamp)).sum())
    return out


def check_teacher_logprobs(teacher_logprobs: Tensor, loss_mask: Tensor, vocab_size: int, *,
                           uniform_atol: float = 1.0, uniform_max_std: float = 0.5) -> None:
    """Fail fast (ValueError) when teacher log-probs on loss tokens are unusable.

    - NaN or Inf: says how many and the first (row, position).
    - Uniform: mean within `uniform_atol` of -ln(vocab_size) and std below `uniform_max_std`
      (needs >= 2 loss tokens): a teacher with unloaded (random or zero) weights predicts about
      1/V everywhere, while a trained teacher scores the student's tokens far above 1/V.
    teacher_logprobs [b, s] float, loss_mask [b, s].
    """
    mask = loss_mask.bool()
    lp = teacher_logprobs.detach().double()
    n = int(mask.sum())
    nan, inf = mask & torch.isnan(lp), mask & torch.isinf(lp)
    if nan.any() or inf.any():
        row, pos = (nan | inf).nonzero()[0].tolist()
        raise ValueError(
            f"teacher log-probs: {int(nan.sum())} NaN and {int(inf.sum())} Inf among {n} loss "
            f"tokens (first at row {row}, position {pos}); the teacher forward overflowed or its "
            f"weights are corrupt")
    if n < 2:
        return
    values = lp[mask]
    mean, std, uniform = float(values.mean()), float(values.std()), -math.log(vocab_size)
    if abs(mean - uniform) < uniform_atol and std < uniform_max_std:
        raise ValueError(
            f"teacher log-probs look uniform: mean {mean:.3f} (-ln V = {uniform:.3f} for "
            f"vocab_size {vocab_size}), std {std:.3f} over {n} loss tokens; the teacher's "
            f"weights are probably not loaded")
