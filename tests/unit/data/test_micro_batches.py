"""Token-budget micro-batches (data/micro_batches.py) against a brute-force reading of the rule."""

import pytest
import torch

from rlad_megatron.data.micro_batches import (fixed_plan, row_lengths, token_budget_count,
                                              token_budget_plan)


def _check_partition(plan, lengths):
    rows = torch.cat(plan.rows).sort().values
    assert torch.equal(rows, torch.arange(len(lengths))), "every row exactly once"
    for r, w in zip(plan.rows, plan.widths):
        assert w >= int(lengths[r].max()), "a micro-batch holds each of its rows' tokens"


@pytest.mark.parametrize("seed", range(5))
def test_token_budget_plan_partitions_rows_within_the_budget(seed):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(4, 257, (64,), generator=g)
    budget = 512
    plan = token_budget_plan(lengths, budget)
    _check_partition(plan, lengths)
    for r, w in zip(plan.rows, plan.widths):
        assert w == int(lengths[r].max()), "trimmed to its own longest row"
        assert len(r) * w <= budget or len(r) == 1
    # sorted consecutive runs: greedy fill means no run could take the next row
    sorted_lengths = lengths.sort(descending=True).values.tolist()
    pos = 0
    for r, w in zip(plan.rows, plan.widths):
        pos += len(r)
        if pos < len(sorted_lengths):
            assert (len(r) + 1) * w > budget, "a run stops only when the next row would not fit"
    assert len(plan) == token_budget_count(lengths, budget)
    fixed = fixed_plan(64, int(lengths.max()), 8)
    assert plan.useful_token_frac(lengths) > fixed.useful_token_frac(lengths)
    assert plan.useful_token_frac(lengths) == pytest.approx(
        float(lengths.sum()) / sum(len(r) * w for r, w in zip(plan.rows, plan.widths)))


def test_a_row_longer_than_the_budget_is_a_micro_batch_of_its_own():
    lengths = torch.tensor([300, 10, 10, 10])
    plan = token_budget_plan(lengths, 100)
    assert [r.tolist() for r in plan.rows] == [[0], [1, 2, 3]]
    assert plan.widths == (300, 10)


def test_agreement_splits_the_largest_micro_batches_and_rounds_up():
    lengths = torch.tensor([8, 8, 8, 8, 8, 8, 2, 2])
    assert token_budget_count(lengths, 64) == 1
    plan = token_budget_plan(lengths, 64, min_micro_batches=3)
    _check_partition(plan, lengths)
    assert [len(r) for r in plan.rows] == [2, 2, 4]
    assert plan.widths == (8, 8, 8)
    plan = token_budget_plan(lengths, 64, min_micro_batches=3, multiple_of=2)
    assert len(plan) == 4
    assert len(token_budget_plan(lengths, 64, min_micro_batches=20)) == 8  # one row each at most
    with pytest.raises(ValueError, match="9 micro-batches needed for 8 rows"):
        token_budget_plan(lengths, 64, min_micro_batches=7, multiple_of=3)


def test_widths_round_up_for_sequence_parallelism():
    plan = token_budget_plan(torch.tensor([7, 5, 3]), 100, width_multiple=4)
    assert plan.widths == (8,)


def test_fixed_plan_is_consecutive_rows_at_full_width():
    plan = fixed_plan(5, 12, 2)
    assert [r.tolist() for r in plan.rows] == [[0, 1], [2, 3], [4]]
    assert plan.widths == (12, 12, 12)
    assert plan.processed_tokens() == 60
    assert torch.equal(row_lengths(torch.tensor([2, 3]), torch.tensor([4, 0])),
                       torch.tensor([6, 3]))


def test_bad_budget_is_refused():
    with pytest.raises(ValueError, match="max_tokens_per_micro_batch: 0 must be >= 1"):
        token_budget_plan(torch.tensor([3]), 0)


def test_the_one_planner_picks_fixed_or_token_budgets_and_the_fallback_checks_the_size():
    """plan_micro_batches and resolve_plan, the planning every pass goes through: fixed plans
    at full width without a budget, token budgets (at least the agreed count, widths rounded to
    the multiple) with one; a pass given a size gets fixed micro-batches that must divide it."""
    from rlad_megatron.data.micro_batches import (plan_micro_batches, resolve_plan,
                                                  token_budget_plan)

    lengths = torch.tensor([5, 17, 3, 9, 12, 4])
    fixed = plan_micro_batches(lengths, 20, micro_batch_size=2)
    assert [r.tolist() for r in fixed.rows] == [[0, 1], [2, 3], [4, 5]]
    assert fixed.widths == (20, 20, 20)
    budget = plan_micro_batches(lengths, 20, micro_batch_size=2, max_tokens=24,
                                min_micro_batches=4, width_multiple=4)
    want = token_budget_plan(lengths, 24, min_micro_batches=4, width_multiple=4)
    assert [r.tolist() for r in budget.rows] == [r.tolist() for r in want.rows]
    assert budget.widths == want.widths and len(budget.rows) >= 4
    assert all(w % 4 == 0 for w in budget.widths)
    assert resolve_plan(6, 20, None, budget) is budget
    three = resolve_plan(6, 20, 3, None)
    assert [r.tolist() for r in three.rows] == [[0, 1, 2], [3, 4, 5]] and three.widths == (20, 20)
    with pytest.raises(ValueError, match="micro_batch_size: 4 does not divide the batch of 6"):
        resolve_plan(6, 20, 4, None)
