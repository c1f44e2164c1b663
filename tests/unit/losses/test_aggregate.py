"""Aggregation exactness under micro-batching and data parallelism (losses/aggregate.py).

Guards the contract: a micro-batch's loss is its SUM contribution over the GLOBAL normaliser, so
summing micro-batch losses (and gradients, and merged metric statistics) over any split of the
batch into micro-batches and DP ranks equals one call on the whole batch. A failure usually means
a loss normalised by a local count.
"""

import pytest
import torch

from rlad_megatron.losses import (aggregate, finalize, global_normalizers, grpo_loss, kdrl_loss,
                                  merge, sft_loss, trrd_loss)
from loss_options import grpo_opts, kdrl_opts, sft_opts, trrd_opts

TOL = dict(rtol=1e-12, atol=1e-13)


def make_batch(b=8, s=9):
    g = torch.Generator().manual_seed(11)
    old = -torch.rand(b, s, generator=g, dtype=torch.float64) * 2 - 0.1
    lp = (old + 0.5 * torch.randn(b, s, generator=g, dtype=torch.float64)).requires_grad_()
    teacher = old + torch.randn(b, s, generator=g, dtype=torch.float64)
    adv = torch.randn(b, generator=g, dtype=torch.float64)
    lengths = torch.tensor([8, 2, 5, 0, 7, 1, 4, 6])           # very unequal, one empty row
    mask = torch.arange(s)[None, :] >= s - lengths[:, None]
    return lp, old, teacher, adv, mask


LOSS_CALLS = {
    "trrd": lambda lp, old, t, a, m, agg, **norms: trrd_loss(
        lp, old, t, a, m, **trrd_opts(dual_clip=3.0, kl_beta=0.02, agg=agg), ref_logprobs=old,
        **norms),
    "grpo": lambda lp, old, t, a, m, agg, **norms: grpo_loss(lp, old, a, m, **grpo_opts(agg=agg),
                                                             **norms),
    "kdrl": lambda lp, old, t, a, m, agg, **norms: kdrl_loss(
        lp, old, t, a, m, **kdrl_opts(beta=0.1, agg=agg), **norms),
    "sft": lambda lp, old, t, a, m, agg, **norms: sft_loss(lp, m, **sft_opts(agg=agg), **norms),
}

# rows per DP rank, then micro-batch boundaries inside each rank
LAYOUTS = {
    "one_call_in_pieces": [[list(range(8))]],
    "micro_3_5": [[[0, 1, 2], [3, 4, 5, 6, 7]]],
    "micro_1_2_2_3": [[[0], [1, 2], [3, 4], [5, 6, 7]]],
    "dp2_interleaved": [[[0, 2], [4, 6]], [[1, 3, 5], [7]]],
    "dp4_single_rows": [[[0], [4]], [[1], [5]], [[2], [6]], [[3], [7]]],
}


def run_split(name, agg, layout):
    lp, old, teacher, adv, mask = make_batch()
    norms = global_normalizers(mask)
    total, stats = 0.0, {}
    for rank in layout:
        for rows in rank:
            r = torch.tensor(rows)
            loss, m = LOSS_CALLS[name](lp[r], old[r], teacher[r], adv[r], mask[r], agg=agg,
                                       **norms)
            loss.backward()
            total, stats = total + loss.detach(), merge(stats, m)
    return total, lp.grad, stats


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("agg", ["seq_mean_token_mean", "token_mean"])
@pytest.mark.parametrize("name", list(LOSS_CALLS))
def test_split_losses_gradients_and_metrics_sum_to_one_call(name, agg, layout):
    whole_loss, whole_grad, whole_stats = run_split(name, agg, [[list(range(8))]])
    loss, grad, stats = run_split(name, agg, LAYOUTS[layout])
    torch.testing.assert_close(loss, whole_loss, **TOL)
    torch.testing.assert_close(grad, whole_grad, **TOL)
    assert stats.keys() == whole_stats.keys()
    for key in stats:
        torch.testing.assert_close(stats[key], whole_stats[key], **TOL, msg=key)


def test_one_call_with_default_counts_is_the_plain_mean():
    values = torch.tensor([[1.0, 2.0, 3.0, 0.0], [4.0, 0.0, 0.0, 0.0], [9.0, 9.0, 9.0, 9.0]],
                          dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    assert aggregate(values, mask, "seq_mean_token_mean").item() == (2.0 + 4.0) / 2
    assert aggregate(values, mask, "token_mean").item() == 10.0 / 4
    assert aggregate(values, mask, "token_mean", num_tokens=8).item() == 10.0 / 8
    assert aggregate(values, mask, "seq_mean_token_mean", num_seqs=torch.tensor(4)).item() == 1.5


def test_averaging_micro_batch_means_would_be_wrong_on_this_data():
    """Sensitivity check of the batch above: the naive alternative must differ."""
    lp, old, teacher, adv, mask = make_batch()
    whole, _ = trrd_loss(lp, old, teacher, adv, mask, **trrd_opts())
    parts = [trrd_loss(lp[r], old[r], teacher[r], adv[r], mask[r], **trrd_opts())[0]
             for r in (torch.tensor([0, 1, 2]), torch.tensor([3, 4, 5, 6, 7]))]
    assert not torch.allclose(torch.stack(parts).mean(), whole)
    assert not torch.allclose(torch.stack(parts).sum(), whole)


def test_empty_batch_gives_zero_loss_and_nan_free_metrics():
    lp, old, teacher, adv, mask = make_batch()
    loss, m = trrd_loss(lp, old, teacher, adv, torch.zeros_like(mask), **trrd_opts())
    assert loss.item() == 0.0
    final = finalize(m)
    assert final["count/tokens"] == 0.0 and final["loss/trrd"] == 0.0


def test_unknown_aggregation_lists_known_ones():
    with pytest.raises(ValueError, match="seq_mean_token_mean"):
        aggregate(torch.zeros(1, 1), torch.ones(1, 1), "sequence_sum")
