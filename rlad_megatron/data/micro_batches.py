"""How a batch's rows are cut into micro-batches for a forward (and backward) pass.

This module is the one owner of micro-batch planning: `plan_micro_batches` (the trainer's passes:
fixed or token budgets, phases.micro_batches agrees the count over DP) and `resolve_plan` (a pass
called with a plan or a micro-batch size: models/forward.py, train/step.py). Two plans, both lists
of (row indices, width):

  fixed         consecutive rows, `train.micro_batch_size` per micro-batch, every micro-batch as
                wide as the batch (padded to the step's longest sequence): the default.
  token budget  `train.max_tokens_per_micro_batch` > 0: rows sorted by length (longest first)
                and cut into consecutive runs whose padded size rows x longest row stays within
                the budget; each micro-batch is trimmed to its own longest row. Sorting before
                cutting puts rows of similar length together, so little of a micro-batch is
                padding (verl's dynamic batching does the same; sorted consecutive cuts are the
                optimal partition for a padded-cost budget up to one bin).

Exactness: the losses are called with global normalisers and the gradients divided by the
mini-batch's rows (train/step.py), so any partition of the rows, in any order and at any width
that holds every real token, gives the same loss and gradients.

Agreement: data-parallel ranks hold rows of different lengths and would cut them into different
numbers of micro-batches. Megatron's schedule needs no cross-rank agreement on that number, but a
rank that ends early waits at the gradient all-reduce while the others still run their
micro-batches (and a layout that needs a multiple of some count would break); so the caller
passes `min_micro_batches` (the largest count over the DP ranks, train/step.py) and
`multiple_of`, and the plan splits its largest micro-batches until it has that many. All ranks of
a model-parallel group hold the same rows, hence the same plan.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor


@dataclass(frozen=True)
class MicroBatchPlan:
    """rows[i]: [mb_i] int64 indices into the batch; widths[i]: columns the micro-batch keeps
    (>= the length of each of its rows). Every row of the batch appears in exactly one rows[i]."""

    rows: tuple[Tensor, ...]
    widths: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.rows)

    def processed_tokens(self) -> int:
        """Positions the model runs over: sum of mb_i x width_i (real tokens and padding)."""
        return sum(len(r) * w for r, w in zip(self.rows, self.widths))

    def useful_token_frac(self, lengths: Tensor) -> float:
        """Real tokens / processed tokens (lengths [b]: real tokens of each row)."""
        return float(lengths.sum()) / max(self.processed_tokens(), 1)


def row_lengths(prompt_lengths: Tensor, response_lengths: Tensor) -> Tensor:
    """[b] real tokens of each row (prompt then response; padding follows)."""
    return (prompt_lengths + response_lengths).long()


def fixed_plan(batch_size: int, width: int, micro_batch_size: int) -> MicroBatchPlan:
    """Consecutive rows, micro_batch_size per micro-batch (the last may be smaller), full width."""
    if micro_batch_size < 1:
        raise ValueError(f"micro_batch_size: {micro_batch_size} must be >= 1")
    rows = tuple(torch.arange(i, min(i + micro_batch_size, batch_size))
                 for i in range(0, batch_size, micro_batch_size))
    return MicroBatchPlan(rows, (width,) * len(rows))


def token_budget_count(lengths: Tensor, budget: int) -> int:
    """Micro-batches a token-budget plan of these rows needs (before any agreement)."""
    return len(_cuts(lengths.sort(descending=True, stable=True).values.tolist(), budget))


def token_budget_plan(lengths: Tensor, budget: int, *, min_micro_batches: int = 1,
                      multiple_of: int = 1, width_multiple: int = 1) -> MicroBatchPlan:
    """Rows sorted by length (longest first, ties in row order) cut into consecutive runs of at
    most `budget` padded tokens (a row longer than the budget is a micro-batch of its own); then
    the micro-batch with the most rows is halved until there are at least `min_micro_batches`
    and a multiple of `multiple_of` of them (never more than the rows). Each width is the run's
    longest row rounded up to `width_multiple` (sequence parallelism splits the sequence by TP).
    """
    if budget < 1:
        raise ValueError(f"train.max_tokens_per_micro_batch: {budget} must be >= 1")
    b = len(lengths)
    order = lengths.sort(descending=True, stable=True).indices
    sorted_lengths = lengths[order].tolist()
    runs = _cuts(sorted_lengths, budget)
    target = max(len(runs), min(min_micro_batches, b))
    if multiple_of > 1:
        target = -(-target // multiple_of) * multiple_of
    if target > b:
        raise ValueError(f"token-budget micro-batches: {target} micro-batches needed for "
                         f"{b} rows (a multiple of {multiple_of}); use more rows per rank")
    while len(runs) < target:
        i = max(range(len(runs)), key=lambda k: (runs[k][1] - runs[k][0], -k))
        lo, hi = runs[i]
        mid = lo + (hi - lo + 1) // 2
        runs[i:i + 1] = [(lo, mid), (mid, hi)]
    rows = tuple(order[lo:hi] for lo, hi in runs)
    widths = tuple(-(-max(int(sorted_lengths[lo]), 1) // width_multiple) * width_multiple
                   for lo, _ in runs)
    return MicroBatchPlan(rows, widths)


def _cuts(sorted_lengths: list[int], budget: int) -> list[tuple[int, int]]:
    """[lo, hi) runs of a descending length list; a run's cost is its rows x its first length."""
    runs, lo = [], 0
    while lo < len(sorted_lengths):
        longest = max(int(sorted_lengths[lo]), 1)
        hi = lo + max(1, budget // longest)
        runs.append((lo, min(hi, len(sorted_lengths))))
        lo = runs[-1][1]
    return runs


def plan_micro_batches(lengths: Tensor, width: int, *, micro_batch_size: int,
                       max_tokens: int = 0, min_micro_batches: int = 1,
                       width_multiple: int = 1) -> MicroBatchPlan:
    """The micro-batches of rows with `lengths` [b] real tokens in a [b, width] batch: fixed
    (micro_batch_size consecutive rows at full width) when max_tokens is 0, else token budgets of
    max_tokens padded tokens, at least min_micro_batches of them (the DP ranks' agreed count),
    widths a multiple of width_multiple."""
    if not max_tokens:
        return fixed_plan(len(lengths), width, micro_batch_size)
    return token_budget_plan(lengths, max_tokens, min_micro_batches=min_micro_batches,
                             width_multiple=width_multiple)


def resolve_plan(batch_size: int, width: int, micro_batch_size: Optional[int],
                 plan: Optional[MicroBatchPlan]) -> MicroBatchPlan:
    """`plan`, or consecutive micro_batch_size-row micro-batches at full width, which must divide
    the batch (a pipeline's shapes are fixed)."""
    if plan is not None:
        return plan
    if micro_batch_size is None or micro_batch_size < 1 or batch_size % micro_batch_size:
        raise ValueError(f"micro_batch_size: {micro_batch_size} does not divide the batch of "
                         f"{batch_size} rows (pipeline shapes are fixed)")
    return fixed_plan(batch_size, width, micro_batch_size)
