"""KDRL (GRPO + beta * KL(pi_S || pi_T)), its beta schedule, and SFT (token NLL).

Guards that the baselines are what the paper compares against: KDRL adds an advantage-free
reverse-KL term to exactly the GRPO loss, SFT is the mean NLL.
"""

import pytest
import torch

from rlad_megatron.losses import grpo_loss, kdrl_beta, kdrl_loss, sft_loss
from loss_options import grpo_opts, kdrl_opts, sft_opts

TOL = dict(rtol=1e-12, atol=1e-12)


def make_batch(seed=0, b=4, s=6):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(b, s, generator=g, dtype=torch.float64) * 2 - 0.1
    lp = (old + 0.4 * torch.randn(b, s, generator=g, dtype=torch.float64)).requires_grad_()
    teacher = old + torch.randn(b, s, generator=g, dtype=torch.float64)
    adv = torch.randn(b, generator=g, dtype=torch.float64)
    mask = torch.rand(b, s, generator=g) > 0.3
    mask[:, 0] = False
    return lp, old, teacher, adv, mask


def seq_mean_token_mean(values, mask):
    rows = [values[i][mask[i]].mean() for i in range(mask.shape[0]) if mask[i].any()]
    return torch.stack(rows).mean()


def test_kdrl_at_beta_zero_equals_grpo_exactly():
    lp, old, teacher, adv, mask = make_batch()
    kdrl, _ = kdrl_loss(lp, old, teacher, adv, mask, **kdrl_opts(beta=0.0))
    grpo, _ = grpo_loss(lp, old, adv, mask, **grpo_opts())
    assert torch.equal(kdrl, grpo)
    assert torch.equal(torch.autograd.grad(kdrl, lp)[0], torch.autograd.grad(grpo, lp)[0])


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_kdrl_adds_beta_times_reverse_kl_to_teacher(estimator):
    lp, old, teacher, adv, mask = make_batch(seed=1)
    beta = 0.3
    kdrl, m = kdrl_loss(lp, old, teacher, adv, mask,
                        **kdrl_opts(beta=beta, kl_estimator=estimator))
    grpo, _ = grpo_loss(lp, old, adv, mask, **grpo_opts())
    x = lp - teacher  # log pi_S - log pi_T on the student's tokens
    kl = {"k1": x, "k2": 0.5 * x * x, "k3": torch.exp(-x) - 1 + x}[estimator]
    expected = grpo + beta * seq_mean_token_mean(kl, mask)
    torch.testing.assert_close(kdrl, expected, **TOL)
    torch.testing.assert_close(torch.autograd.grad(kdrl, lp)[0],
                               torch.autograd.grad(expected, lp)[0], **TOL)
    assert m["loss/kdrl"].item() == pytest.approx(kdrl.item())
    assert m["loss/grpo"].item() == pytest.approx(grpo.item())


def test_kdrl_teacher_mask_removes_the_kl_term_on_unselected_tokens():
    lp, old, teacher, adv, mask = make_batch(seed=2)
    selected = torch.zeros_like(mask)
    selected[0] = True
    kdrl, m = kdrl_loss(lp, old, teacher, adv, mask, **kdrl_opts(beta=0.5, kl_estimator="k2"),
                        teacher_mask=selected)
    grpo, _ = grpo_loss(lp, old, adv, mask, **grpo_opts())
    kl = torch.where(selected, 0.5 * (lp - teacher) ** 2, torch.zeros_like(lp))
    torch.testing.assert_close(kdrl, grpo + 0.5 * seq_mean_token_mean(kl, mask), **TOL)
    assert m["teacher/selected_frac"] == (selected & mask).sum()


def test_kdrl_beta_anneals_linearly_and_stops_at_beta_min():
    values = [kdrl_beta(step, 5e-3, 1e-3, 100) for step in (0, 25, 50, 100, 101, 10_000)]
    assert values == pytest.approx([5e-3, 4e-3, 3e-3, 1e-3, 1e-3, 1e-3], rel=1e-12)
    assert kdrl_beta(7, 2e-3, 2e-3, 50) == 2e-3          # constant
    assert kdrl_beta(0, 5e-3, 1e-3, 0) == 1e-3           # no ramp
    with pytest.raises(ValueError, match="step: -1"):
        kdrl_beta(-1, 5e-3, 1e-3, 100)


@pytest.mark.parametrize("agg", ["token_mean", "seq_mean_token_mean"])
def test_sft_is_the_mean_negative_log_likelihood(agg):
    lp, _, _, _, mask = make_batch(seed=3)
    loss, m = sft_loss(lp, mask, **sft_opts(agg=agg))
    expected = -lp[mask].mean() if agg == "token_mean" else -seq_mean_token_mean(lp, mask)
    torch.testing.assert_close(loss, expected, **TOL)
    torch.testing.assert_close(torch.autograd.grad(loss, lp)[0],
                               torch.autograd.grad(expected, lp)[0], **TOL)
    assert m["sft/nll_mean"].item() == pytest.approx(-lp[mask].sum().item())
