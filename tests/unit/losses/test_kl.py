"""KL estimators (losses/kl.py) against the exact KL(pi_S || pi_ref) on an enumerated vocabulary.

Guards the estimator formulas and their direction (samples from pi_S, KL(pi_S || pi_ref)).
"""

import pytest
import torch

from rlad_megatron.losses import KL_ESTIMATORS, kl_estimate

V = 7


def distributions(scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(V, generator=g, dtype=torch.float64).requires_grad_()
    ref_logits = logits.detach() + scale * torch.randn(V, generator=g, dtype=torch.float64)
    return logits, torch.log_softmax(ref_logits, -1)


def exact_kl(logits, ref_lp):
    lp = torch.log_softmax(logits, -1)
    return (lp.exp() * (lp - ref_lp)).sum()


def expectation(estimator, logits, ref_lp, *, detach_weights=False):
    """E_{y ~ pi_S}[k(y)] by enumerating every token y of the vocabulary."""
    lp = torch.log_softmax(logits, -1)
    weights = lp.exp().detach() if detach_weights else lp.exp()
    per_token = kl_estimate(lp[None, :], ref_lp[None, :], estimator)[0]
    return (weights * per_token).sum()


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_k1_and_k3_are_unbiased(estimator):
    logits, ref_lp = distributions()
    kl = exact_kl(logits, ref_lp)
    assert kl > 0.1
    torch.testing.assert_close(expectation(estimator, logits, ref_lp), kl, rtol=1e-12, atol=0)


def test_k3_is_nonnegative_per_sample():
    x = torch.linspace(-5, 5, 101, dtype=torch.float64)[None, :]
    assert (kl_estimate(x, torch.zeros_like(x), "k3") >= 0).all()


def test_k2_expectation_matches_kl_to_second_order():
    errors = []
    for scale in (0.1, 0.01):
        logits, ref_lp = distributions(scale=scale, seed=1)
        kl = exact_kl(logits, ref_lp)
        errors.append(float(((expectation("k2", logits, ref_lp) - kl).abs() / kl).detach()))
    # relative error O(scale): shrinks about tenfold when the divergence scale does
    assert errors[1] < 2e-3 and errors[1] < errors[0] / 5


def test_k2_expected_gradient_equals_exact_kl_gradient():
    logits, ref_lp = distributions(seed=2)
    (g_est,) = torch.autograd.grad(expectation("k2", logits, ref_lp, detach_weights=True), logits)
    (g_exact,) = torch.autograd.grad(exact_kl(logits, ref_lp), logits)
    torch.testing.assert_close(g_est, g_exact, rtol=1e-12, atol=1e-14)


def test_estimators_are_zero_for_equal_distributions():
    x = torch.randn(2, 3, dtype=torch.float64)
    for name in KL_ESTIMATORS:
        assert torch.count_nonzero(kl_estimate(x, x, name)) == 0


def test_unknown_estimator_lists_known_ones():
    with pytest.raises(ValueError, match="k1"):
        kl_estimate(torch.zeros(1, 1), torch.zeros(1, 1), "k5")
