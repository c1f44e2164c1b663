"""The reproduction's statistics against hand-computed values and an independent float64
integration of Student's t density.

A failure means the tables' confidence intervals or paired differences are wrong: a claimed
gain could be noise, or a real one hidden.
"""

import math

import pytest
import torch

from rlad_megatron.reproduce.stats import (eval_se, mean_ci, paired_difference, paired_eval_se,
                                           pooled_se, prompt_means, t975)


def _t_cdf(x: float, df: int) -> float:
    """P(T <= x) by Simpson's rule on the t density in float64 (independent of the table)."""
    n = 200_001
    grid = torch.linspace(0.0, x, n, dtype=torch.float64)
    log_c = (math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi))
    pdf = torch.exp(log_c - (df + 1) / 2 * torch.log1p(grid ** 2 / df))
    h = x / (n - 1)
    simpson = h / 3 * (pdf[0] + pdf[-1] + 4 * pdf[1:-1:2].sum() + 2 * pdf[2:-1:2].sum())
    return 0.5 + float(simpson)


@pytest.mark.parametrize("df", [1, 2, 3, 4, 7, 12, 30])
def test_t_quantile_matches_integrated_density(df):
    assert _t_cdf(t975(df), df) == pytest.approx(0.975, abs=2e-6)


def test_t_quantile_beyond_table_is_normal():
    assert t975(1000) == pytest.approx(1.959964, abs=1e-6)
    with pytest.raises(ValueError):
        t975(0)


def test_mean_ci_by_hand():
    # values 0.5, 0.6, 0.7: mean 0.6, sd 0.1, half-width t(2) * 0.1 / sqrt(3)
    est = mean_ci([0.5, 0.6, 0.7])
    assert est.mean == pytest.approx(0.6)
    assert est.sd == pytest.approx(0.1)
    assert est.half_width == pytest.approx(4.302652729749464 * 0.1 / math.sqrt(3))
    assert est.n == 3 and est.excludes_zero()
    one = mean_ci([0.4])
    assert one.mean == 0.4 and math.isnan(one.half_width) and not one.excludes_zero()
    assert math.isnan(mean_ci([]).mean)


def test_paired_difference_uses_shared_seeds_only():
    # three shared seeds, RLAD 63.3 59.8 61.9 vs GRPO 58.2 52.7 52.7; seed 4 is RLAD's alone
    rlad = {1: 0.633, 2: 0.598, 3: 0.619, 4: 0.9}
    grpo = {1: 0.582, 2: 0.527, 3: 0.527}
    est = paired_difference(rlad, grpo)
    diffs = [0.051, 0.071, 0.092]
    mean = sum(diffs) / 3
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 2)
    assert est.n == 3 and est.mean == pytest.approx(mean)
    assert est.half_width == pytest.approx(4.302652729749464 * sd / math.sqrt(3))
    assert est.low == pytest.approx(0.0200, abs=5e-4) and est.high == pytest.approx(0.1220,
                                                                                      abs=5e-4)


def test_evaluation_standard_errors_by_hand():
    records = [{"id": "a", "level": 3, "reward": 4.0, "steps_correct": 2},
               {"id": "b", "level": 3, "reward": 0.0, "steps_correct": 0},
               {"id": "c", "level": 4, "reward": 2.0, "steps_correct": None}]
    means = prompt_means(records, k=4)
    assert means == {"a": 1.0, "b": 0.0, "c": 0.5}
    assert prompt_means(records, 4, level=3) == {"a": 1.0, "b": 0.0}
    assert prompt_means(records, 4, field="steps_correct") == {"a": 0.5, "b": 0.0}
    # sd of (1, 0, 0.5) = 0.5; se = 0.5 / sqrt(3)
    assert eval_se(means) == pytest.approx(0.5 / math.sqrt(3))
    other = {"a": 0.75, "b": 0.25, "c": 0.5}
    # per-prompt differences (0.25, -0.25, 0): sd 0.25, se 0.25 / sqrt(3)
    assert paired_eval_se(means, other) == pytest.approx(0.25 / math.sqrt(3))
    assert pooled_se([0.03, 0.04]) == pytest.approx(0.025)
    assert math.isnan(eval_se({"a": 1.0}))
