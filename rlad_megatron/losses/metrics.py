"""The metrics contract of the losses: sufficient statistics, how they reduce, how they finalise.

A loss returns `metrics: dict[str, Tensor]` of 0-dim fp64 detached tensors keyed `area/name`.
They are SUFFICIENT STATISTICS, not final values, so that any split of the global batch into
micro-batches and DP ranks reduces to the whole batch's numbers:

    reduce:   each key with its op in REDUCE_OPS ("sum" | "min" | "max"): across micro-batches
              with `merge(a, b)`, across DP ranks with all_reduce(op) (done in train/)
    finalise: `finalize(stats)`: a key with a normaliser in NORMALIZERS is divided by it
              (fractions = count / tokens, means = sum / tokens); other keys pass through

Keys (<area> is "trrd" or "grpo"; kdrl_loss reports the "grpo" keys of its policy part):
    loss/<area>, loss/kdrl, loss/sft  sum  the loss; exact global loss given global normalisers
    count/tokens, count/seqs      sum  loss tokens; sequences with at least one loss token
    <area>/pg_loss                sum  the clipped-surrogate part of the loss
    <area>/clip_frac_high_pos     sum  tokens with A > 0 and r > 1 + eps_high   (clipped: no grad)
    <area>/clip_frac_low_neg      sum  tokens with A < 0 and r < 1 - eps_low    (clipped: no grad)
    <area>/clip_frac_high_neg     sum  tokens with A < 0 and r > 1 + eps_high   (not clipped)
    <area>/clip_frac_low_pos      sum  tokens with A > 0 and r < 1 - eps_low    (not clipped)
    <area>/dual_clip_frac         sum  tokens with A < 0 and r > dual_clip      (dual clip bounds)
    <area>/ratio_mean             sum  of r;  <area>/ratio_min (min), <area>/ratio_max (max)
    teacher/clamp_frac            sum  anchored tokens with |lp - lp_T| > c (trrd)
    teacher/selected_frac         sum  loss tokens with teacher_mask == 1 (trrd, kdrl)
    teacher/logprob_mean          sum  of lp_T over loss tokens (trrd, kdrl)
    teacher/logratio_mean         sum  of lp - lp_T over loss tokens (trrd, kdrl)
    kl/ref_mean, kl/teacher_mean  sum  of the KL estimator (to reference; to teacher for kdrl)
    sft/nll_mean                  sum  of -lp over loss tokens
    policy/entropy_mean           sum  of the student's entropy H(pi_S(. | prefix)) over loss
                                       tokens (added by the trainer from the logits, train/step.py)
    loss/joint                    sum  RL term + lambda * distillation term (losses/joint.py)
    joint/rl_term, joint/distill_term  sum  the two terms of loss/joint (the latter times lambda)
    distill/tokens, distill/seqs  sum  selected teacher-row tokens and rows (distill_mask)
    distill/nll_mean, distill/ratio_mean, distill/is_weight_mean
                                  sum  of -lp, r and the importance weight over distill tokens
Every fraction and mean is over ALL loss tokens (count/tokens), the distill/ ones over
distill/tokens. min/max of an empty batch are
+inf/-inf (the identities of the reduction) and finalise to NaN.
"""

from __future__ import annotations

import math
from typing import Mapping

import torch
from torch import Tensor

TOKENS = "count/tokens"
DISTILL_TOKENS = "distill/tokens"
POLICY_AREAS = ("trrd", "grpo")


def _policy_keys(area: str) -> dict[str, tuple[str, str | None]]:
    per_token = ("clip_frac_high_pos", "clip_frac_low_neg", "clip_frac_high_neg",
                 "clip_frac_low_pos", "dual_clip_frac", "ratio_mean")
    keys = {f"{area}/{name}": ("sum", TOKENS) for name in per_token}
    keys.update({f"{area}/ratio_min": ("min", None), f"{area}/ratio_max": ("max", None),
                 f"{area}/pg_loss": ("sum", None), f"loss/{area}": ("sum", None)})
    return keys


METRICS: dict[str, tuple[str, str | None]] = {
    TOKENS: ("sum", None),
    "count/seqs": ("sum", None),
    **{key: spec for area in POLICY_AREAS for key, spec in _policy_keys(area).items()},
    "teacher/clamp_frac": ("sum", TOKENS),
    "teacher/selected_frac": ("sum", TOKENS),
    "teacher/logprob_mean": ("sum", TOKENS),
    "teacher/logratio_mean": ("sum", TOKENS),
    "kl/ref_mean": ("sum", TOKENS),
    "kl/teacher_mean": ("sum", TOKENS),
    "loss/kdrl": ("sum", None),
    "loss/sft": ("sum", None),
    "sft/nll_mean": ("sum", TOKENS),
    "policy/entropy_mean": ("sum", TOKENS),
    "loss/joint": ("sum", None),
    "joint/rl_term": ("sum", None),
    "joint/distill_term": ("sum", None),
    DISTILL_TOKENS: ("sum", None),
    "distill/seqs": ("sum", None),
    "distill/nll_mean": ("sum", DISTILL_TOKENS),
    "distill/ratio_mean": ("sum", DISTILL_TOKENS),
    "distill/is_weight_mean": ("sum", DISTILL_TOKENS),
}
"""key -> (reduce op, normalising key or None)."""

REDUCE_OPS: dict[str, str] = {key: op for key, (op, _) in METRICS.items()}
NORMALIZERS: dict[str, str] = {key: norm for key, (_, norm) in METRICS.items() if norm}

_COMBINE = {"sum": torch.add, "min": torch.minimum, "max": torch.maximum}
_IDENTITY = {"min": math.inf, "max": -math.inf}


def reduce_op(key: str) -> str:
    """"sum" | "min" | "max" for a metric key; ValueError for a key missing from METRICS."""
    if key not in REDUCE_OPS:
        raise ValueError(f"unknown metric key {key!r}: add it to METRICS in losses/metrics.py")
    return REDUCE_OPS[key]


def stat(value) -> Tensor:
    """A statistic as a 0-dim fp64 tensor cut from the graph."""
    return torch.as_tensor(value).detach().to(torch.float64).reshape(())


def merge(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Statistics of two disjoint parts of a batch -> statistics of their union (key-wise op)."""
    out = dict(a)
    for key, value in b.items():
        out[key] = _COMBINE[reduce_op(key)](out[key], value) if key in out else value
    return out


def finalize(stats: Mapping[str, Tensor]) -> dict[str, float]:
    """Reduced statistics -> final values: normalised keys divided by their normaliser (NaN when
    it is 0), min/max identities (+-inf) -> NaN, everything else as is."""
    out = {}
    for key, value in stats.items():
        op, norm = reduce_op(key), NORMALIZERS.get(key)
        v = float(value)
        if norm is not None:
            denom = float(stats[norm])
            v = v / denom if denom > 0 else math.nan
        elif v == _IDENTITY.get(op):
            v = math.nan
        out[key] = v
    return out
