"""The one 4-rank layout, TP=2 x PP=2: student log-probs, entropy and gradients, and the fused
teacher path, against the float64 reference (see tests/model_checks.py)."""

import pytest

from model_checks import check_forward_logprobs, check_gradients


@pytest.mark.parametrize("parallel", [(2, 2)], indirect=True, ids=["tp2-pp2"])
def test_forward_logprobs_tp2_pp2_match_float64_reference(parallel):
    check_forward_logprobs(parallel, arch="tiny-qwen2", vocab_size=250, temperature=0.8)


@pytest.mark.parametrize("parallel", [(2, 2)], indirect=True, ids=["tp2-pp2"])
def test_gradients_tp2_pp2_match_float64_reference(parallel):
    check_gradients(parallel, arch="tiny-qwen3", vocab_size=256)
