"""The metrics contract (losses/metrics.py): every key a loss returns has a reduce op, merging the
statistics of two halves equals the statistics of the whole, finalize turns sums into means.
A failure usually means a new metric was added without a table entry, or a non-additive value
(a mean, a fraction) was returned as a statistic."""

import math

import pytest
import torch

from rlad_megatron.losses import (METRICS, REDUCE_OPS, finalize, global_normalizers, grpo_loss,
                                  kdrl_loss, merge, reduce_op, sft_loss, trrd_loss)
from loss_options import grpo_opts, kdrl_opts, sft_opts, trrd_opts


def make_batch(b=6, s=8):
    g = torch.Generator().manual_seed(3)
    old = -torch.rand(b, s, generator=g, dtype=torch.float64) * 2 - 0.1
    lp = old + 0.6 * torch.randn(b, s, generator=g, dtype=torch.float64)
    teacher = old + torch.randn(b, s, generator=g, dtype=torch.float64)
    adv = torch.randn(b, generator=g, dtype=torch.float64)
    mask = torch.rand(b, s, generator=g) > 0.3
    return lp, old, teacher, adv, mask


def all_losses(lp, old, teacher, adv, mask, **norms):
    return [
        trrd_loss(lp, old, teacher, adv, mask, **trrd_opts(dual_clip=2.0, kl_beta=0.1),
                  ref_logprobs=old, **norms)[1],
        grpo_loss(lp, old, adv, mask, **grpo_opts(), **norms)[1],
        kdrl_loss(lp, old, teacher, adv, mask, **kdrl_opts(), **norms)[1],
        sft_loss(lp, mask, **sft_opts(), **norms)[1],
    ]


def test_every_returned_key_has_a_reduce_op_and_is_a_detached_scalar():
    for metrics in all_losses(*make_batch()):
        for key, value in metrics.items():
            assert key in METRICS and reduce_op(key) in ("sum", "min", "max"), key
            assert "/" in key and value.shape == () and not value.requires_grad, key


def test_merged_halves_equal_the_whole_and_finalize_agrees():
    lp, old, teacher, adv, mask = make_batch()
    norms = global_normalizers(mask)
    whole = all_losses(lp, old, teacher, adv, mask, **norms)
    first = all_losses(*(t[:2] for t in (lp, old, teacher, adv, mask)), **norms)
    second = all_losses(*(t[2:] for t in (lp, old, teacher, adv, mask)), **norms)
    for w, a, b in zip(whole, first, second):
        merged = merge(a, b)
        assert merged.keys() == w.keys()
        for key in w:
            torch.testing.assert_close(merged[key], w[key], rtol=1e-12, atol=1e-13, msg=key)
        assert finalize(merged) == pytest.approx(finalize(w), rel=1e-12)


def test_merge_uses_each_keys_op():
    a = {"trrd/ratio_min": torch.tensor(0.5), "trrd/ratio_max": torch.tensor(2.0),
         "count/tokens": torch.tensor(3.0)}
    b = {"trrd/ratio_min": torch.tensor(0.7), "trrd/ratio_max": torch.tensor(1.0),
         "count/tokens": torch.tensor(4.0), "trrd/ratio_mean": torch.tensor(9.0)}
    merged = merge(a, b)
    assert {k: float(v) for k, v in merged.items()} == {
        "trrd/ratio_min": 0.5, "trrd/ratio_max": 2.0, "count/tokens": 7.0, "trrd/ratio_mean": 9.0}
    assert REDUCE_OPS["trrd/ratio_min"] == "min" and REDUCE_OPS["loss/trrd"] == "sum"


def test_finalize_divides_by_tokens_and_maps_empty_identities_to_nan():
    final = finalize({"count/tokens": torch.tensor(4.0),
                      "trrd/clip_frac_high_pos": torch.tensor(1.0),
                      "loss/trrd": torch.tensor(0.25),
                      "trrd/ratio_min": torch.tensor(0.9, dtype=torch.float64)})
    assert final == {"count/tokens": 4.0, "trrd/clip_frac_high_pos": 0.25, "loss/trrd": 0.25,
                     "trrd/ratio_min": 0.9}
    empty = finalize({"count/tokens": torch.tensor(0.0), "trrd/ratio_mean": torch.tensor(0.0),
                      "trrd/ratio_min": torch.tensor(math.inf),
                      "trrd/ratio_max": torch.tensor(-math.inf)})
    assert math.isnan(empty["trrd/ratio_mean"]) and math.isnan(empty["trrd/ratio_min"])
    assert math.isnan(empty["trrd/ratio_max"])


def test_unknown_key_is_rejected_naming_the_table():
    with pytest.raises(ValueError, match="METRICS"):
        merge({"trrd/new_thing": torch.tensor(1.0)}, {"trrd/new_thing": torch.tensor(1.0)})
