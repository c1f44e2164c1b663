"""Per-token sample estimators of KL(pi || pi_ref) from tokens sampled from pi.

With x = log pi(y) - log pi_ref(y) for a token y ~ pi (the student's own rollout token):

    k1 = x                          unbiased:  E_pi[k1] = KL(pi || pi_ref)
    k2 = x^2 / 2                    E_pi[k2] = KL + O(x^3); E_pi[grad k2] (sample weights held
                                    fixed) = grad KL(pi || pi_ref) exactly
    k3 = exp(-x) - 1 + x            unbiased and >= 0 per sample:  E_pi[k3] = KL(pi || pi_ref)

Shapes: logprobs, ref_logprobs [b, s] fp32 -> [b, s]. Masking and aggregation are the caller's.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor


def k1(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k1 = log pi - log pi_ref."""
    return logprobs - ref_logprobs


def k2(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k2 = (log pi - log pi_ref)^2 / 2."""
    return 0.5 * (logprobs - ref_logprobs).square()


def k3(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k3 = pi_ref/pi - 1 - log(pi_ref/pi)."""
    log_ratio = ref_logprobs - logprobs
    return torch.expm1(log_ratio) - log_ratio


KL_ESTIMATORS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {"k1": k1, "k2": k2, "k3": k3}


def check_kl_estimator(estimator: str) -> None:
    """ValueError naming the known estimators when `estimator` is not one of them."""
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"unknown kl_estimator {estimator!r}; known: {sorted(KL_ESTIMATORS)}")


def kl_estimate(logprobs: Tensor, ref_logprobs: Tensor, estimator: str) -> Tensor:
    """[b, s] per-token estimate of KL(pi || pi_ref) by the named estimator."""
    check_kl_estimator(estimator)
    return KL_ESTIMATORS[estimator](logprobs, ref_logprobs)
