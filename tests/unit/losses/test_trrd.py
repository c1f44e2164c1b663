"""TRRD loss (losses/trrd.py) against an independent per-token float64 loop of paper Eq. 4-5.

Guards: the formula (alpha on the OLD student), alpha = 1 == GRPO, the Appendix-B clamp in both
gradient modes, the teacher mask, dual clip, the paper's regimes by sign of A, and that padding
never leaks. A failure here usually means the ratio, the clip or the clamp changed meaning.
"""

import math

import pytest
import torch

from rlad_megatron.losses import grpo_loss, trrd_log_ratio, trrd_loss
from loss_options import grpo_opts, trrd_opts

TOL = dict(rtol=1e-12, atol=1e-12)  # float64 on CPU; only summation order differs


def make_batch(seed=0, b=5, s=7, spread=0.4):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(b, s, generator=g, dtype=torch.float64) * 3.0 - 0.05
    lp = (old + spread * torch.randn(b, s, generator=g, dtype=torch.float64)).requires_grad_()
    teacher = old + 1.5 * torch.randn(b, s, generator=g, dtype=torch.float64)
    adv = torch.randn(b, generator=g, dtype=torch.float64)
    mask = torch.rand(b, s, generator=g) > 0.25
    mask[:, 0] = False          # position 0 never has a loss
    mask[-1] = False            # a row without loss tokens
    return lp, old, teacher, adv, mask


def reference(lp, old, teacher, adv, mask, *, alpha=0.5, eps_low=0.2, eps_high=0.28, c=1.0,
              teacher_mask=None, clamp_grad="detach", dual_clip=None):
    """Loss and d loss / d lp, token by token in Python floats (seq-mean-token-mean)."""
    lp, old, teacher = lp.tolist(), old.tolist(), teacher.tolist()
    b, s = mask.shape
    n_seqs = sum(1 for i in range(b) if any(mask[i].tolist()))
    loss, grad = 0.0, [[0.0] * s for _ in range(b)]
    for i in range(b):
        n_i = int(mask[i].sum())
        for t in range(s):
            if not mask[i, t]:
                continue
            a = float(adv[i])
            if teacher_mask is None or teacher_mask[i, t]:
                d = lp[i][t] - teacher[i][t]
                log_r = alpha * (lp[i][t] - old[i][t]) + (1 - alpha) * min(max(d, -c), c)
                inside = clamp_grad == "straight_through" or -c <= d <= c
                dlog_r = alpha + (1 - alpha) * (1.0 if inside else 0.0)
            else:
                log_r, dlog_r = lp[i][t] - old[i][t], 1.0
            r = math.exp(log_r)
            unclipped, clipped = r * a, min(max(r, 1 - eps_low), 1 + eps_high) * a
            tok, dtok = (-unclipped, -a * r * dlog_r) if unclipped <= clipped else (-clipped, 0.0)
            if dual_clip is not None and a < 0 and tok > -dual_clip * a:
                tok, dtok = -dual_clip * a, 0.0
            loss += tok / n_i / n_seqs
            grad[i][t] = dtok / n_i / n_seqs
    return torch.tensor(loss, dtype=torch.float64), torch.tensor(grad, dtype=torch.float64)


def grad_of(loss, lp):
    (g,) = torch.autograd.grad(loss, lp)
    return g


@pytest.mark.parametrize("clamp_grad", ["detach", "straight_through"])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 1.0])
def test_trrd_matches_per_token_float64_reference(alpha, clamp_grad):
    lp, old, teacher, adv, mask = make_batch(seed=1)
    loss, _ = trrd_loss(lp, old, teacher, adv, mask,
                        **trrd_opts(alpha=alpha, clamp_grad=clamp_grad))
    ref_loss, ref_grad = reference(lp, old, teacher, adv, mask, alpha=alpha,
                                   clamp_grad=clamp_grad)
    torch.testing.assert_close(loss, ref_loss, **TOL)
    torch.testing.assert_close(grad_of(loss, lp), ref_grad, **TOL)


def test_trrd_reference_cases_exercise_every_branch():
    """The reference comparison above is only meaningful if the data hit clip and clamp."""
    lp, old, teacher, adv, mask = make_batch(seed=1)
    _, m = trrd_loss(lp, old, teacher, adv, mask, **trrd_opts())
    assert m["teacher/clamp_frac"] > 0 and m["teacher/clamp_frac"] < m["count/tokens"]
    assert m["trrd/clip_frac_high_pos"] + m["trrd/clip_frac_low_neg"] > 0


@pytest.mark.parametrize("dual_clip", [1.5, 3.0])
def test_trrd_dual_clip_matches_reference(dual_clip):
    lp, old, teacher, adv, mask = make_batch(seed=2, spread=2.0)
    loss, m = trrd_loss(lp, old, teacher, adv, mask, **trrd_opts(dual_clip=dual_clip))
    ref_loss, ref_grad = reference(lp, old, teacher, adv, mask, dual_clip=dual_clip)
    torch.testing.assert_close(loss, ref_loss, **TOL)
    torch.testing.assert_close(grad_of(loss, lp), ref_grad, **TOL)
    assert m["trrd/dual_clip_frac"] > 0


def test_trrd_alpha_one_equals_grpo_exactly():
    lp, old, teacher, adv, mask = make_batch(seed=3)
    trrd, _ = trrd_loss(lp, old, teacher, adv, mask, **trrd_opts(alpha=1.0))
    grpo, _ = grpo_loss(lp, old, adv, mask, **grpo_opts())
    assert torch.equal(trrd, grpo)
    assert torch.equal(grad_of(trrd, lp), grad_of(grpo, lp))


@pytest.mark.parametrize("alpha", [0.0, 0.25, 0.5, 0.9])
def test_trrd_teacher_equal_to_old_student_is_grpo_for_any_alpha(alpha):
    lp, old, _, adv, mask = make_batch(seed=4, spread=0.3)  # |lp - lp_old| < c: clamp inactive
    trrd, _ = trrd_loss(lp, old, old, adv, mask, **trrd_opts(alpha=alpha))
    grpo, _ = grpo_loss(lp, old, adv, mask, **grpo_opts())
    torch.testing.assert_close(trrd, grpo, **TOL)
    torch.testing.assert_close(grad_of(trrd, lp), grad_of(grpo, lp), **TOL)


def test_trrd_teacher_mask_zero_is_grpo_and_partial_mask_matches_reference():
    lp, old, teacher, adv, mask = make_batch(seed=5)
    off = torch.zeros_like(mask)
    trrd, _ = trrd_loss(lp, old, teacher, adv, mask, **trrd_opts(), teacher_mask=off)
    grpo, _ = grpo_loss(lp, old, adv, mask, **grpo_opts())
    assert torch.equal(trrd, grpo)
    assert torch.equal(grad_of(trrd, lp), grad_of(grpo, lp))
    partial = torch.rand(mask.shape, generator=torch.Generator().manual_seed(0)) > 0.5
    loss, m = trrd_loss(lp, old, teacher, adv, mask, **trrd_opts(), teacher_mask=partial)
    ref_loss, ref_grad = reference(lp, old, teacher, adv, mask, teacher_mask=partial)
    torch.testing.assert_close(loss, ref_loss, **TOL)
    torch.testing.assert_close(grad_of(loss, lp), ref_grad, **TOL)
    assert m["teacher/selected_frac"] == (partial & mask).sum()


def test_clamp_values_and_gradients_at_and_beyond_bounds():
    # d = lp - lp_T: beyond below, at -c, inside, at +c, beyond above (c = 1, exact in binary)
    lp = torch.tensor([[-3.0, -2.0, -1.5, -1.0, -0.5]], dtype=torch.float64)
    teacher = torch.tensor([[-1.0, -1.0, -1.25, -2.0, -2.0]], dtype=torch.float64)
    old = torch.full_like(lp, -1.0)
    d_clamped = torch.tensor([[-1.0, -1.0, -0.25, 1.0, 1.0]], dtype=torch.float64)
    alpha = 0.5
    expected_value = alpha * (lp - old) + (1 - alpha) * d_clamped
    expected_grad = {"detach": [0.5, 1.0, 1.0, 1.0, 0.5], "straight_through": [1.0] * 5}
    for mode, grad in expected_grad.items():
        x = lp.clone().requires_grad_()
        log_r = trrd_log_ratio(x, old, teacher, alpha=alpha, clamp=1.0, clamp_grad=mode)
        assert torch.equal(log_r.detach(), expected_value), mode
        assert grad_of(log_r.sum(), x).tolist() == [grad], mode


def test_clamp_grad_modes_differ_in_loss_gradient_only_outside_clamp():
    lp, old, teacher, adv, mask = make_batch(seed=6)
    det, _ = trrd_loss(lp, old, teacher, adv, mask, **trrd_opts(clamp_grad="detach"))
    st, _ = trrd_loss(lp, old, teacher, adv, mask, **trrd_opts(clamp_grad="straight_through"))
    assert torch.equal(det, st)
    outside = ((lp - teacher).abs() > 1.0) & mask
    g_det, g_st = grad_of(det, lp), grad_of(st, lp)
    assert torch.equal(g_det[~outside], g_st[~outside])
    assert not torch.equal(g_det[outside], g_st[outside])


def gradcheck_batch():
    """Ratios away from 1 - eps_low / 1 + eps_high and |lp - lp_T| away from c (the kinks)."""
    old = torch.tensor([[-1.0, -1.0, -2.0, -0.5], [-1.5, -1.0, -0.7, -2.5]], dtype=torch.float64)
    step = torch.tensor([[0.05, 0.6, -0.6, -0.1], [0.4, -0.9, 0.02, 1.5]], dtype=torch.float64)
    teacher = old + torch.tensor([[0.3, -0.2, 1.7, -2.2], [0.1, 0.5, -0.3, 0.4]],
                                 dtype=torch.float64)
    return old + step, old, teacher, torch.tensor([0.7, -1.3], dtype=torch.float64)


@pytest.mark.parametrize("clamp_grad", ["detach", "straight_through"])
def test_trrd_gradcheck(clamp_grad):
    lp, old, teacher, adv = gradcheck_batch()
    mask = torch.ones_like(lp, dtype=torch.bool)
    if clamp_grad == "straight_through":  # by design the gradient ignores the clamp outside it
        teacher = lp - (lp - teacher).clamp(-0.8, 0.8)

    def f(x, t):
        return trrd_loss(x, old, t, adv, mask, **trrd_opts(clamp_grad=clamp_grad, dual_clip=3.0))[0]

    assert torch.autograd.gradcheck(f, (lp.clone().requires_grad_(),
                                        teacher.clone().requires_grad_()))


def clip_threshold(adv, teacher_lp, old_lp=-1.0, alpha=0.5):
    """The lp at which the clip engages for one token, read from where the gradient vanishes."""
    lp = torch.linspace(-2.0, 0.0, 20001, dtype=torch.float64).reshape(1, -1).requires_grad_()
    old = torch.full_like(lp, old_lp)
    teacher = torch.full_like(lp, teacher_lp)
    loss, _ = trrd_loss(lp, old, teacher, torch.tensor([adv], dtype=torch.float64),
                        torch.ones_like(lp, dtype=torch.bool), **trrd_opts(alpha=alpha))
    live = grad_of(loss, lp)[0] != 0
    grid = lp.detach()[0]
    return float(grid[live].max()) if adv > 0 else float(grid[live].min())


def test_regime_positive_advantage_teacher_endorsed_token_rises_further():
    endorsed, rejected = clip_threshold(1.0, teacher_lp=-0.8), clip_threshold(1.0, teacher_lp=-1.2)
    # lp* = log(1 + eps_high) + alpha * lp_old + (1 - alpha) * lp_T (clamp inactive here)
    assert endorsed == pytest.approx(math.log(1.28) - 0.5 - 0.4, abs=2e-4)
    assert rejected == pytest.approx(math.log(1.28) - 0.5 - 0.6, abs=2e-4)
    assert endorsed > rejected + 0.19


def test_regime_negative_advantage_teacher_endorsed_token_is_protected():
    endorsed = clip_threshold(-1.0, teacher_lp=-0.8)
    rejected = clip_threshold(-1.0, teacher_lp=-1.2)
    assert endorsed == pytest.approx(math.log(0.8) - 0.5 - 0.4, abs=2e-4)
    assert rejected == pytest.approx(math.log(0.8) - 0.5 - 0.6, abs=2e-4)
    # the allowed decrease below lp_old = -1 is smaller for the token the teacher prefers
    assert (-1.0 - endorsed) < (-1.0 - rejected) - 0.19


def test_regime_zero_advantage_has_no_teacher_effect():
    lp, old, teacher, adv, mask = make_batch(seed=7)
    loss, _ = trrd_loss(lp, old, teacher, torch.zeros_like(adv), mask, **trrd_opts())
    assert loss.item() == 0.0
    assert torch.count_nonzero(grad_of(loss, lp)) == 0


def test_per_token_advantages_equal_broadcast_sequence_advantages():
    lp, old, teacher, adv, mask = make_batch(seed=8)
    seq, _ = trrd_loss(lp, old, teacher, adv, mask, **trrd_opts())
    tok, _ = trrd_loss(lp, old, teacher, adv[:, None].expand(mask.shape).clone(), mask,
                       **trrd_opts())
    assert torch.equal(seq, tok)


def test_padding_nan_does_not_leak_into_loss_or_gradient():
    lp, old, teacher, adv, mask = make_batch(seed=9)
    clean, _ = trrd_loss(lp, old, teacher, adv, mask, **trrd_opts())
    nan = torch.full_like(old, math.nan)
    dirty, m = trrd_loss(lp, torch.where(mask, old, nan), torch.where(mask, teacher, nan), adv,
                         mask, **trrd_opts(kl_beta=0.1), ref_logprobs=nan.where(~mask, old))
    assert torch.isfinite(dirty) and all(torch.isfinite(v) for v in m.values())
    assert torch.isfinite(grad_of(dirty, lp)).all()
    assert torch.equal(trrd_loss(lp, torch.where(mask, old, nan), teacher, adv, mask,
                                 **trrd_opts())[0], clean)


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_trrd_reference_kl_term_adds_beta_times_aggregated_kl(estimator):
    lp, old, teacher, adv, mask = make_batch(seed=10)
    ref = old + 0.2
    base, _ = trrd_loss(lp, old, teacher, adv, mask, **trrd_opts())
    with_kl, m = trrd_loss(lp, old, teacher, adv, mask,
                           **trrd_opts(kl_beta=0.05, kl_estimator=estimator), ref_logprobs=ref)
    x = (lp - ref).detach()
    per_token = {"k1": x, "k2": 0.5 * x * x, "k3": torch.exp(-x) - 1 + x}[estimator]
    rows = [per_token[i][mask[i]].mean() for i in range(mask.shape[0]) if mask[i].any()]
    torch.testing.assert_close(with_kl, base + 0.05 * torch.stack(rows).mean(), **TOL)
    assert m["kl/ref_mean"] == pytest.approx(float(per_token[mask].sum()))


@pytest.mark.parametrize("kwargs, message", [
    ({"clamp_grad": "stop"}, "straight_through"),
    ({"kl_beta": 0.1}, "ref_logprobs"),
    ({"agg": "sum"}, "token_mean"),
    ({"kl_estimator": "k4"}, "k3"),
])
def test_trrd_rejects_unknown_choices_and_a_missing_input_naming_them(kwargs, message):
    """(The options' numeric ranges are loss.trrd's, checked by TRRDLossConfig.validate:
    tests/unit/config/test_config.py.)"""
    lp, old, teacher, adv, mask = make_batch()
    with pytest.raises(ValueError, match=message):
        trrd_loss(lp, old, teacher, adv, mask, **trrd_opts(**kwargs))


def test_trrd_rejects_mismatched_shapes():
    lp, old, teacher, adv, mask = make_batch()
    with pytest.raises(ValueError, match="teacher_logprobs"):
        trrd_loss(lp, old, teacher[:, 1:], adv, mask, **trrd_opts())
    with pytest.raises(ValueError, match="advantages"):
        trrd_loss(lp, old, teacher, adv[1:], mask, **trrd_opts())
