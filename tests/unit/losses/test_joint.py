"""The joint RL + distillation loss (losses/joint.py, bound as losses/bound.py JointLoss) against
independent float64 token loops.

Guards: total = RL term + lambda * distillation term with each term normalised over its own mask;
the "ratio" term's off-policy weight (pi_old / pi_T)^alpha truncated at the cap and its clipped
surrogate; the "nll" term; that no selected teacher row leaves exactly the RL loss; that teacher =
student makes TRRD equal GRPO; and that halves called with the global normalisers add up to the
whole. A failure here means a term changed meaning or the aggregation stopped being exact.
"""

import math

import pytest
import torch

from loss_options import grpo_opts, trrd_opts
from rlad_megatron.losses import (GRPOLoss, JointLoss, LossInputs, Normalisers, TRRDLoss,
                                  global_normalizers, grpo_loss, trrd_loss)

D = torch.float64
TOL = dict(rtol=1e-12, atol=1e-12)


def make_batch(seed=0, b=6, s=7):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(b, s, generator=g, dtype=D) * 3.0 - 0.05
    lp = (old + 0.3 * torch.randn(b, s, generator=g, dtype=D)).requires_grad_()
    teacher = old + 1.2 * torch.randn(b, s, generator=g, dtype=D)
    adv = torch.randn(b, generator=g, dtype=D)
    response = torch.rand(b, s, generator=g) > 0.2
    response[:, 0] = False
    teacher_rows = torch.tensor([False, False, True, False, True, True])
    loss_mask = response & ~teacher_rows[:, None]
    distill = response & torch.tensor([False, False, True, False, False, True])[:, None]
    return lp, old, teacher, adv, loss_mask, distill


def joint(rl, lp, old, teacher, adv, loss_mask, distill_mask, *, distill, weight,
          importance_cap=1.0, norms=Normalisers()):
    """The JointLoss of the bound RL loss `rl` on these inputs."""
    loss = JointLoss(rl=rl, distill=distill, weight=weight, importance_cap=importance_cap)
    inputs = LossInputs(old_logprobs=old, advantages=adv, loss_mask=loss_mask,
                        teacher_logprobs=teacher, distill_mask=distill_mask)
    return loss(lp, inputs, norms)


def ratio_term_reference(lp, old, teacher, adv, mask, *, alpha, eps_low=0.2, eps_high=0.28,
                         c=1.0, cap=1.0):
    """seq-mean-token-mean of w * -min(r A, clip(r) A) over `mask`, token by token."""
    lp, old, teacher = lp.tolist(), old.tolist(), teacher.tolist()
    rows = [i for i in range(mask.shape[0]) if mask[i].any()]
    total = 0.0
    for i in rows:
        n_i, row = int(mask[i].sum()), 0.0
        for t in range(mask.shape[1]):
            if not mask[i, t]:
                continue
            d = min(max(lp[i][t] - teacher[i][t], -c), c)
            r = math.exp(alpha * (lp[i][t] - old[i][t]) + (1 - alpha) * d)
            w = min(math.exp(alpha * (old[i][t] - teacher[i][t])), cap)
            a = float(adv[i])
            row += w * -min(r * a, min(max(r, 1 - eps_low), 1 + eps_high) * a)
        total += row / n_i
    return total / len(rows)


@pytest.mark.parametrize("alpha,cap", [(0.5, 1.0), (0.3, 2.5), (0.0, 1.0)])
def test_ratio_term_matches_token_loop(alpha, cap):
    lp, old, teacher, adv, loss_mask, distill = make_batch()
    value, m = joint(TRRDLoss(**trrd_opts(alpha=alpha)), lp, old, teacher, adv, loss_mask,
                     distill, distill="ratio", weight=0.7, importance_cap=cap)
    rl, _ = trrd_loss(lp, old, teacher, adv, loss_mask, **trrd_opts(alpha=alpha))
    expected = rl.item() + 0.7 * ratio_term_reference(lp, old, teacher, adv, distill, alpha=alpha,
                                                      cap=cap)
    torch.testing.assert_close(value, torch.tensor(expected, dtype=D), **TOL)
    assert m["joint/rl_term"].item() == pytest.approx(rl.item(), rel=1e-12)
    assert m["distill/seqs"].item() == 2 and m["distill/tokens"].item() == distill.sum()


def test_nll_term_is_token_negative_log_likelihood_per_sequence():
    lp, old, teacher, adv, loss_mask, distill = make_batch(seed=1)
    value, m = joint(GRPOLoss(**grpo_opts(agg="seq_mean_token_mean")), lp, old, teacher, adv,
                     loss_mask, distill, distill="nll", weight=0.25)
    rl, _ = grpo_loss(lp, old, adv, loss_mask, **grpo_opts(agg="seq_mean_token_mean"))
    rows = [i for i in range(distill.shape[0]) if distill[i].any()]
    nll = sum(-lp[i][distill[i]].mean().item() for i in rows) / len(rows)
    torch.testing.assert_close(value, torch.tensor(rl.item() + 0.25 * nll, dtype=D), **TOL)
    value.backward()
    # the gradient of a distilled token is -weight / (n_i * n_rows) from the nll term alone
    i = rows[0]
    t = int(distill[i].nonzero()[0])
    assert lp.grad[i, t].item() == pytest.approx(-0.25 / (int(distill[i].sum()) * len(rows)))


def test_no_selected_teacher_row_leaves_exactly_the_rl_loss():
    lp, old, teacher, adv, loss_mask, distill = make_batch(seed=2)
    none = torch.zeros_like(distill)
    value, m = joint(TRRDLoss(**trrd_opts(alpha=0.5)), lp, old, teacher, adv, loss_mask, none,
                     distill="ratio", weight=3.0)
    rl, _ = trrd_loss(lp, old, teacher, adv, loss_mask, **trrd_opts(alpha=0.5))
    assert value.item() == rl.item() and m["joint/distill_term"].item() == 0.0


def test_teacher_equal_to_student_makes_trrd_equal_to_grpo():
    g = torch.Generator().manual_seed(3)
    old = -torch.rand(4, 6, generator=g, dtype=D) * 2 - 0.1
    lp = (old + 0.1 * torch.randn(4, 6, generator=g, dtype=D)).requires_grad_()
    adv, mask = torch.randn(4, generator=g, dtype=D), torch.rand(4, 6, generator=g) > 0.2
    trrd, _ = trrd_loss(lp, old, old, adv, mask, **trrd_opts(alpha=0.3))
    (g_trrd,) = torch.autograd.grad(trrd, lp)
    grpo, _ = grpo_loss(lp, old, adv, mask, **grpo_opts())
    (g_grpo,) = torch.autograd.grad(grpo, lp)
    torch.testing.assert_close(trrd, grpo, **TOL)
    torch.testing.assert_close(g_trrd, g_grpo, **TOL)


@pytest.mark.parametrize("agg", ["seq_mean_token_mean", "token_mean"])
def test_halves_with_global_normalisers_add_up_to_the_whole(agg):
    lp, old, teacher, adv, loss_mask, distill = make_batch(seed=4)
    rl = TRRDLoss(**trrd_opts(alpha=0.5, agg=agg))
    whole, _ = joint(rl, lp, old, teacher, adv, loss_mask, distill, distill="ratio", weight=0.5)
    n, d = global_normalizers(loss_mask), global_normalizers(distill)
    norms = Normalisers(num_seqs=n["num_seqs"], num_tokens=n["num_tokens"],
                        distill_num_seqs=d["num_seqs"], distill_num_tokens=d["num_tokens"])
    parts = [joint(rl, lp[h], old[h], teacher[h], adv[h], loss_mask[h], distill[h],
                   distill="ratio", weight=0.5, norms=norms)[0]
             for h in (slice(0, 3), slice(3, 6))]
    torch.testing.assert_close(parts[0] + parts[1], whole, **TOL)


def test_an_unknown_distill_loss_and_a_missing_teacher_are_refused():
    """(weight and importance_cap's ranges are imitation's: ImitationConfig.validate.)"""
    lp, old, teacher, adv, loss_mask, distill = make_batch()
    grpo = GRPOLoss(**grpo_opts())
    with pytest.raises(ValueError, match="unknown distill loss"):
        joint(grpo, lp, old, teacher, adv, loss_mask, distill, distill="kl", weight=1.0)
    with pytest.raises(ValueError, match="needs teacher_logprobs"):
        joint(grpo, lp, old, None, adv, loss_mask, distill, distill="ratio", weight=1.0)
