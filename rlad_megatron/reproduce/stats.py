"""The statistics of the reproduction tables: means over seeds with Student-t 95% confidence
intervals, paired differences to the baseline, and the evaluation's own standard error.

Two sources of noise, reported separately:
  * training noise: seeds differ in their rollouts and prompt order. A column's "mean +- CI" is
    the mean over seeds of each seed's held-out mean@k and the t-interval of that mean
    (n - 1 degrees of freedom): t_{0.975, n-1} * sd / sqrt(n).
  * evaluation noise: a finite set of prompts and k samples. eval_se is the standard error of one
    run's mean@k over prompts (sd of per-prompt means / sqrt(n_prompts)); for a paired difference,
    of the per-prompt differences between two runs evaluated on the same prompts with the same
    sampling seed (evaluation noise that two runs share cancels there).
A paired difference to the baseline is taken seed by seed (both arms of a seed saw the same
prompts per step and the same evaluation draws), then summarised over seeds like a column.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Optional, Sequence

_T975 = (12.706204736174705, 4.302652729749464, 3.182446305284263, 2.7764451051977934,
         2.570581835636314, 2.446911851144969, 2.3646242510102993, 2.306004135204166,
         2.2621571628540993, 2.2281388519649385, 2.200985160082949, 2.1788128296634177,
         2.1603686564610127, 2.1447866879169273, 2.131449545559323, 2.1199052992210112,
         2.1098155778331806, 2.10092204024096, 2.093024054408263, 2.0859634472658364,
         2.079613844727662, 2.0738730679040147, 2.0686576104190406, 2.0638985616280205,
         2.059538552753294, 2.055529438642871, 2.0518305164802833, 2.048407141795244,
         2.045229642132703, 2.0422724563012373)
"""t_{0.975, df} for df = 1..30 (two-sided 95%); beyond 30 the normal quantile is within 2%."""


def t975(df: int) -> float:
    """The 0.975 quantile of Student's t with `df` degrees of freedom."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    return _T975[df - 1] if df <= len(_T975) else NormalDist().inv_cdf(0.975)


@dataclass(frozen=True)
class Estimate:
    """A mean over n values with its 95% half-width (nan for n < 2) and sample sd."""

    mean: float
    half_width: float
    sd: float
    n: int

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width

    def excludes_zero(self) -> bool:
        return self.n > 1 and (self.low > 0 or self.high < 0)

    def as_dict(self) -> dict:
        return {"mean": self.mean, "ci95": self.half_width, "sd": self.sd, "n": self.n,
                "low": self.low, "high": self.high}


def mean_ci(values: Sequence[float]) -> Estimate:
    """Mean and Student-t 95% half-width of `values` (module docstring)."""
    n = len(values)
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, 0)
    mean = sum(values) / n
    if n == 1:
        return Estimate(mean, math.nan, math.nan, 1)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return Estimate(mean, t975(n - 1) * sd / math.sqrt(n), sd, n)


def paired_difference(arm: dict[int, float], baseline: dict[int, float]) -> Estimate:
    """mean_ci of arm[s] - baseline[s] over the seeds s both have."""
    seeds = sorted(set(arm) & set(baseline))
    return mean_ci([arm[s] - baseline[s] for s in seeds])


def prompt_means(records: Sequence[dict], k: int, level: Optional[int] = None,
                 field: str = "reward") -> dict[str, float]:
    """{prompt id: mean over its k samples} of one evaluation's records (train/evaluate.py);
    `field` "reward" (the configured reward) or "steps_correct" (step-checked)."""
    return {r["id"]: r[field] / k for r in records
            if (level is None or r.get("level") == level) and r.get(field) is not None}


def eval_se(means: dict[str, float]) -> float:
    """Standard error over prompts of one run's mean@k (nan for fewer than 2 prompts)."""
    return mean_ci(list(means.values())).sd / math.sqrt(len(means)) if len(means) > 1 \
        else math.nan


def paired_eval_se(a: dict[str, float], b: dict[str, float]) -> float:
    """Standard error of mean(a) - mean(b) over the prompts both runs evaluated."""
    shared = sorted(set(a) & set(b))
    return eval_se({p: a[p] - b[p] for p in shared})


def pooled_se(ses: Sequence[float]) -> float:
    """The evaluation SE of a mean over seeds: sqrt(sum se_s^2) / n_seeds."""
    ses = [s for s in ses if not math.isnan(s)]
    return math.sqrt(sum(s * s for s in ses)) / len(ses) if ses else math.nan


def excludes_zero(est: dict) -> bool:
    """A paired difference (Estimate.as_dict) whose 95% CI excludes 0: the tables' `*`."""
    return est["n"] > 1 and (est["low"] > 0 or est["high"] < 0)


def signed(est: dict) -> str:
    """A paired difference in points: +mean ± ci95, `*` where its CI excludes 0."""
    m, h = est["mean"], est["ci95"]
    if math.isnan(m):
        return "-"
    sig = "*" if excludes_zero(est) else ""
    return f"{100 * m:+.1f}" + (f" ± {100 * h:.1f}" if not math.isnan(h) else "") + sig
