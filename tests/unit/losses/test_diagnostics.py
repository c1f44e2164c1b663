"""Diagnostics (losses/diagnostics.py): clip fractions by bound and sign against hand counts,
teacher statistics, and the teacher log-prob guard. A failure here means the numbers logged every
step no longer describe the update (or a broken teacher would train silently)."""

import math

import pytest
import torch

from rlad_megatron.losses import check_teacher_logprobs, finalize, grpo_loss, trrd_loss
from loss_options import grpo_opts, trrd_opts

D = torch.float64


def test_clip_fractions_ratio_stats_by_bound_and_sign_hand_counted():
    # ratios r = exp(lp - lp_old); bounds 0.8 and 1.28; one padding token with an extreme ratio
    r = torch.tensor([[1.5, 0.5, 1.0, 1.1, 0.7, 100.0], [1.3, 0.6, 0.75, 4.0, 1.0, 0.01]], dtype=D)
    adv = torch.tensor([1.0, -1.0], dtype=D)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[0, 5] = False
    old = torch.full_like(r, -2.0)
    _, m = grpo_loss(old + r.log(), old, adv, mask, **grpo_opts(dual_clip=3.0))
    f = finalize(m)
    # row 0 (A > 0): high 1.5; low 0.5, 0.7.  row 1 (A < 0): high 1.3, 4.0; low 0.6, 0.75, 0.01;
    # dual 4.0; the padding ratio 100 counts nowhere
    assert f["count/tokens"] == 11
    assert f["grpo/clip_frac_high_pos"] == pytest.approx(1 / 11)
    assert f["grpo/clip_frac_low_pos"] == pytest.approx(2 / 11)
    assert f["grpo/clip_frac_high_neg"] == pytest.approx(2 / 11)
    assert f["grpo/clip_frac_low_neg"] == pytest.approx(3 / 11)
    assert f["grpo/dual_clip_frac"] == pytest.approx(1 / 11)
    assert f["grpo/ratio_min"] == pytest.approx(0.01)
    assert f["grpo/ratio_max"] == pytest.approx(4.0)
    assert f["grpo/ratio_mean"] == pytest.approx(float(r[mask].mean()))


def test_teacher_statistics_hand_counted():
    lp = torch.tensor([[-1.0, -1.0, -1.0, -1.0]], dtype=D)
    teacher = torch.tensor([[-0.5, -2.5, -3.0, -1.0]], dtype=D)     # lp - lp_T: -0.5 1.5 2 0
    mask = torch.tensor([[True, True, True, True]])
    selected = torch.tensor([[True, True, False, True]])
    _, m = trrd_loss(lp, lp, teacher, torch.tensor([1.0], dtype=D), mask, **trrd_opts(),
                     teacher_mask=selected)
    f = finalize(m)
    assert f["teacher/clamp_frac"] == pytest.approx(1 / 4)          # only 1.5 is anchored
    assert f["teacher/selected_frac"] == pytest.approx(3 / 4)
    assert f["teacher/logprob_mean"] == pytest.approx(-7.0 / 4)
    assert f["teacher/logratio_mean"] == pytest.approx(3.0 / 4)


def realistic(b=4, s=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return -torch.rand(b, s, generator=g, dtype=torch.float32).pow(3) * 6, torch.ones(b, s)


def test_guard_passes_realistic_teacher_logprobs_and_ignores_padding():
    lp, mask = realistic()
    check_teacher_logprobs(lp, mask, vocab_size=32000)
    mask[1, 3:] = 0
    lp[1, 3:] = math.nan
    check_teacher_logprobs(lp, mask, vocab_size=32000)


@pytest.mark.parametrize("bad, words", [(math.nan, "2 NaN and 0 Inf"),
                                        (-math.inf, "0 NaN and 2 Inf")])
def test_guard_reports_nan_and_inf_with_count_and_position(bad, words):
    lp, mask = realistic()
    lp[2, 5] = lp[3, 1] = bad
    with pytest.raises(ValueError, match=rf"{words} among 256 loss tokens \(first at row 2, "
                                         rf"position 5\)"):
        check_teacher_logprobs(lp, mask, vocab_size=32000)


@pytest.mark.parametrize("vocab_size", [128, 32000, 151936])
def test_guard_reports_uniform_logprobs_of_an_unloaded_teacher(vocab_size):
    g = torch.Generator().manual_seed(1)
    lp = -math.log(vocab_size) + 0.05 * torch.randn(4, 64, generator=g)
    with pytest.raises(ValueError, match="look uniform.*not loaded"):
        check_teacher_logprobs(lp, torch.ones(4, 64), vocab_size=vocab_size)
    check_teacher_logprobs(lp, torch.ones(4, 64), vocab_size=vocab_size * 1000)
