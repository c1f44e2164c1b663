"""The student update: a pure loss from losses/ inside megatron's forward-backward schedule.

For each mini-batch (one optimizer step; the mini-batch loop, NaN guard and LR schedule are in
train/phases.py):
  1. global normalisers (sequences and loss tokens of the mini-batch over all DP ranks);
  2. megatron's schedule over micro-batches (no pipelining, 1F1B or interleaved); on the last
     pipeline stage the loss_func turns this rank's vocab shard of the logits into token
     log-probs (ops.token_logprobs, never gathering the vocabulary) and calls the loss;
  3. the optimizer step (megatron's optimizer; grad clipping and the grad norm included).

Exactness under micro-batching and DP: the loss is called with its global normalisers (the
counts it takes among num_seqs / num_tokens over loss_mask and distill_num_seqs /
distill_num_tokens over distill_mask, summed over the mini-batch's DP ranks in one all-reduce),
so the sum of its values over micro-batches and DP ranks is the loss of the whole mini-batch.
Megatron runs with calculate_per_token_loss (models/build.py): loss_func returns (loss * R,
r_local, statistics) with R the mini-batch's rows over all DP ranks and r_local the micro-batch's
rows; the schedule does not divide, DDP sums over DP, and finalize_model_grads divides the
gradients by sum(r_local) = R. The gradient is therefore exactly that of the whole-batch loss,
whatever normalisers the loss uses inside (R is never 0, unlike a loss-token count).

The loss is a bound loss (losses/bound.py; config/run.py RunConfig.loss_for builds it from the
run's config). It reads `logprobs`, computed here, a typed LossInputs record (losses/inputs.py)
from the micro-batch (TrainBatch, or data/sft_batch.py's SFTBatch: `loss_inputs()`), and the
Normalisers it names; a batch without an input the loss needs is refused with the field's
name. Metrics are the losses' sufficient statistics (losses/metrics.py), merged over
micro-batches, all-reduced over DP with each key's op, finalised, and shared with every pipeline
stage.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch
import torch.distributed as dist

from rlad_megatron import ops
from rlad_megatron.data.batch import RowBatch
from rlad_megatron.data.micro_batches import (MicroBatchPlan, plan_micro_batches, resolve_plan,
                                              token_budget_count)
from rlad_megatron.losses import (NORMALISERS, Loss, Normalisers, finalize,
                                  global_normalizers, merge, reduce_op)
from rlad_megatron.models.build import Student
from rlad_megatron.runtime import Parallel
from rlad_megatron.models.forward import (MicroBatch, align_to_tokens, planned_micro_batches,
                                          run_schedule)
from rlad_megatron.runtime import devices
from rlad_megatron.runtime.cpu_shims import cuda_to_cpu

_DIST_OPS = {"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}
_NORMALISERS = dict(zip(NORMALISERS, ("loss_mask", "loss_mask", "distill_mask", "distill_mask")))
"""Normaliser -> the batch mask it counts (global_normalizers' key without the prefix)."""


def _local_counts(loss: Loss, batch: RowBatch) -> dict[str, torch.Tensor]:
    """This rank's counts of every normaliser the loss reads (loss.normalisers), and "rows"."""
    out = {"rows": torch.tensor(batch.batch_size, dtype=torch.int64, device=batch.tokens.device)}
    for name in loss.normalisers:
        mask_field = _NORMALISERS[name]
        mask = getattr(batch, mask_field, None)
        if mask is None:
            raise ValueError(f"loss {loss.name} needs batch.{mask_field}, which is not set")
        key = name.removeprefix("distill_")
        out[name] = global_normalizers(mask)[key].to(torch.int64)
    return out


def micro_batch_plan(par: Parallel, lengths: torch.Tensor, width: int, *, micro_batch_size: int,
                     max_tokens: int = 0) -> MicroBatchPlan:
    """data/micro_batches.py plan_micro_batches with, for token budgets, as many micro-batches on
    every DP rank (the largest count of any rank; one all-reduce) and widths a multiple of TP
    under sequence parallelism. (Token budgets with an interleaved pipeline are refused in
    validation: megatron's interleaved schedule exchanges micro-batches of different shapes out
    of order, config/validate.py `_token_budget`.)"""
    agreed = 1
    if max_tokens:
        count = torch.tensor([token_budget_count(lengths, max_tokens)], dtype=torch.int64)
        devices.all_reduce(count, op=dist.ReduceOp.MAX, group=par.dp_group)
        agreed = int(count.item())
    return plan_micro_batches(lengths, width, micro_batch_size=micro_batch_size,
                              max_tokens=max_tokens, min_micro_batches=agreed,
                              width_multiple=par.tp if par.sequence_parallel else 1)


def _entropy_sum(logits: torch.Tensor, loss_mask: torch.Tensor, tp_group, *, temperature: float,
                 vocab_size: int) -> torch.Tensor:
    """Sum over loss tokens of the student's entropy H(pi_S(. | prefix)) at the update's
    temperature, without gradient (ops.token_entropy on the vocab shards): the policy-entropy
    diagnostic, finalised as policy/entropy_mean."""
    with torch.no_grad():
        h = align_to_tokens(ops.token_entropy(logits.detach(), tp_group, temperature=temperature,
                                              vocab_size=vocab_size))
    return (h.double() * loss_mask.to(h.device)).sum()


def reduce_metrics(stats: dict, dp_group) -> dict:
    """Sufficient statistics of this rank (0-dim tensors, on the device the loss ran on) ->
    reduced over DP with each key's op, on the host: one all-reduce and one host read per op
    (sum, min, max), the update's only ones, after its last micro-batch."""
    device = next(iter(stats.values())).device
    by_op: dict[str, list[str]] = {}
    for key in sorted(stats):
        by_op.setdefault(reduce_op(key), []).append(key)
    out = {}
    for op, keys in by_op.items():
        values = torch.stack([stats[k].to(device, torch.float64).reshape(()) for k in keys])
        devices.all_reduce(values, op=_DIST_OPS[op], group=dp_group)
        out.update(zip(keys, values.cpu()))
    return out


def forward_backward(student: Student, batch: RowBatch, loss: Loss, *,
                     micro_batch_size: Optional[int] = None, plan: Optional[MicroBatchPlan] = None,
                     temperature: float = 1.0) -> dict[str, float]:
    """Gradients of the loss over `batch` (this DP rank's rows: a TrainBatch, or an SFTBatch) into
    the student's grad buffers. batch.old_logprobs None: the on-policy update
    (config/on_policy.py), whose loss reads the detached log-probs of this forward as lp_old.
    Micro-batches: `plan` (data/micro_batches.py; e.g. token budgets), or micro_batch_size
    consecutive rows at full width. Returns the finalised metrics of the whole (all DP ranks)
    batch, on every rank."""
    par = student.par
    plan = resolve_plan(batch.batch_size, batch.seq_len, micro_batch_size, plan)
    local = _local_counts(loss, batch)
    totals = devices.all_reduce(torch.stack(list(local.values())), group=par.dp_group)
    counts = dict(zip(local, totals))
    rows = counts.pop("rows")
    norms = Normalisers(**counts)
    vocab = student.spec.vocab_size
    parts = [batch.select_rows(rows).with_width(width)
             for rows, width in zip(plan.rows, plan.widths)]
    micro_batches = planned_micro_batches(batch.tokens, plan)
    collected: list[dict] = []

    def forward_step(chunk, mb: MicroBatch):
        out = chunk(input_ids=mb.tokens, position_ids=mb.position_ids,
                    attention_mask=mb.attention_mask)
        part = parts[mb.index]

        def loss_func(logits):
            lp = align_to_tokens(ops.token_logprobs(logits, mb.labels, par.tp_group,
                                                    temperature=temperature, vocab_size=vocab))
            record = part.loss_inputs()
            if record.old_logprobs is None and "old_logprobs" in loss.needs:
                # on-policy (config/on_policy.py): pi_old is this very forward
                record = dataclasses.replace(record, old_logprobs=lp.detach())
            record.require(loss.needs, loss.name)
            value, stats = loss(lp, record.to(logits.device), norms)
            stats = {**stats, "policy/entropy_mean": _entropy_sum(
                logits, part.loss_mask, par.tp_group, temperature=temperature, vocab_size=vocab)}
            collected.append(stats)  # on the device: read once, in reduce_metrics
            n_local = torch.tensor(part.batch_size, dtype=torch.int, device=logits.device)
            return value * rows.to(value.dtype).to(value.device), n_local, {}

        return out, loss_func

    for chunk in student.chunks:
        chunk.zero_grad_buffer()
    student.optimizer.zero_grad()
    run_schedule(student, micro_batches, forward_step, forward_only=False,
                 collect_non_loss_data=False)
    metrics = None
    if par.is_last_stage:
        stats = collected[0]
        for s in collected[1:]:
            stats = merge(stats, s)
        metrics = finalize(reduce_metrics(stats, par.dp_group))
    shared = [metrics]
    dist.broadcast_object_list(shared, src=par.last_stage_global_rank, group=par.pp_group)
    return shared[0]


def optimizer_step(student: Student) -> dict[str, float]:
    """megatron's optimizer step (grad clipping inside); grad norm and whether it was applied."""
    with cuda_to_cpu():
        ok, grad_norm, zeros = student.optimizer.step()
    return {"optim/step_ok": float(bool(ok)),
            "optim/grad_norm": float(grad_norm) if grad_norm is not None else float("nan")}


def grads_finite(student: Student) -> bool:
    """True on every rank when no rank holds a NaN or Inf gradient (before the optimizer step)."""
    checks = [torch.isfinite(buffer.grad_data).all()
              for chunk in student.chunks for buffer in getattr(chunk, "buffers", [])]
    flag = (torch.stack(checks).all() if checks else torch.tensor(True)).to(torch.int32)[None]
    devices.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())  # one host read for all buffers
