"""Generation by a model on its own parallel layout for the caller's rows: a teacher with
teacher.parallel (runtime/teacher_parallel.py) generating its trajectories (rollout.teacher_samples)
for the student's DP ranks.

Every student DP rank holds its own prompts (the r-th contiguous slice of the step's prompts).
The teacher's DP ranks are other sets of ranks, so:

    gather    every rank receives every student DP rank's prompt ids (one object all-gather over
              the world); the global prompt order is student DP rank 0's, then rank 1's, ...
    generate  teacher DP rank e generates the contiguous slice e of the prompts through its own
              model-parallel group, with global row ids (row_offset = first prompt x samples), so
              every row draws the noise it draws in the student's layout
    scatter   one object all-gather of each teacher DP rank's RolloutBatch (from its TP rank 0 of
              the first stage: the batch is identical on its model-parallel group); every student
              rank keeps its own prompts' rows, right-padded to the longest of them

A step's generated rows cross the world once (token ids, masks and the sampler's log-probs; no
logits). Objects, not tensors: the rows are small beside the models, and their widths differ;
they go through the host once per step and come back on the compute device, beside the
caller's own rollout.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.distributed as dist

from rlad_megatron.data.batch import PER_ROW_FIELDS, RolloutBatch, fit_columns
from rlad_megatron.models.build import BuiltModel
from rlad_megatron.rollout.generate import GenerationConfig, generate
from rlad_megatron.runtime.devices import compute_device
from rlad_megatron.runtime.parallel import Parallel


def _gather_by_dp(item, dp_rank: int, owner: bool) -> list:
    """Every rank's `item` where `owner`, ordered by dp_rank (one per DP rank)."""
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, (dp_rank, owner, item))
    return [x for _, _, x in sorted((p for p in parts if p[1]), key=lambda p: p[0])]


def _cpu(batch: RolloutBatch) -> RolloutBatch:
    return dataclasses.replace(batch, **{f.name: getattr(batch, f.name).cpu()
                                         for f in dataclasses.fields(batch)})


def _fit(batch: RolloutBatch, width: int, pad_token_id: int) -> RolloutBatch:
    """Every [b, s] field cut or right-padded to `width` (tokens with pad_token_id, the rest 0)."""
    def fit(name: str, value):
        if name in PER_ROW_FIELDS:
            return value
        return fit_columns(value, width, pad_token_id if name == "tokens" else 0)
    return dataclasses.replace(batch, **{f.name: fit(f.name, getattr(batch, f.name))
                                         for f in dataclasses.fields(batch)})


def generate_on_layout(model: BuiltModel, caller: Parallel, prompts: list[list[int]],
                       cfg: GenerationConfig, *, seed: int) -> RolloutBatch:
    """generate(model, prompts, cfg, seed=seed) for this caller DP rank's `prompts`, run on the
    model's own layout (a collective over the whole world: every rank calls it). Rows, group ids
    and noise are those of generation in the caller's layout."""
    par = model.par
    caller_owner = caller.tp_rank == 0 and caller.pp_rank == 0
    shards = _gather_by_dp(prompts, caller.dp_rank, caller_owner)
    everything = [p for shard in shards for p in shard]
    if len(everything) % par.dp:
        raise ValueError(f"teacher.parallel: {len(everything)} prompts do not split evenly over "
                         f"the teacher's {par.dp} data-parallel ranks")
    per = len(everything) // par.dp
    lo = par.dp_rank * per
    k = cfg.samples_per_prompt
    batch = generate(model, everything[lo:lo + per], cfg, seed=seed, row_offset=lo * k)
    owner = par.tp_rank == 0 and par.pp_rank == 0
    batches = _gather_by_dp(_cpu(batch) if owner else None, par.dp_rank, owner)
    width = max(b.seq_len for b in batches)
    merged = [_fit(b, width, cfg.pad_token_id) for b in batches]
    full = RolloutBatch(**{f.name: torch.cat([getattr(b, f.name) for b in merged])
                           for f in dataclasses.fields(RolloutBatch)})
    start = sum(len(s) for s in shards[:caller.dp_rank]) * k
    mine = full.select_rows(slice(start, start + len(prompts) * k))
    longest = int((mine.prompt_lengths + mine.response_lengths).max()) if mine.batch_size else 0
    mine = _fit(mine, max(longest, 1), cfg.pad_token_id)
    device = compute_device()  # where the caller's own rollout is (rollout/generate.py)
    return dataclasses.replace(mine, **{f.name: getattr(mine, f.name).to(device)
                                        for f in dataclasses.fields(mine)})
