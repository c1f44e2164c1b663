"""Supervised batches: prompt + target completion + EOS, loss on the completion tokens only.

Used by `algorithm: sft` (gold solutions, e.g. to make the demo's teacher) and
`algorithm: sft_distill` (teacher-generated traces, rejection-sampled by reward: the paper's
offline-distillation baseline). Same alignment as every batch (data/batch.py): loss_mask[:, t]
is 1 where tokens[:, t] is a completion token (or the EOS after it).
"""

from __future__ import annotations

import torch

from rlad_megatron.data.batch import TrainBatch


def sft_batch(prompts: list[list[int]], targets: list[list[int]], *, eos_id: int, pad_id: int,
              keep: list[bool] | None = None) -> TrainBatch:
    """Right-padded [b, s] batch; rows with keep False have no loss tokens."""
    rows = [p + t + [eos_id] for p, t in zip(prompts, targets)]
    b, s = len(rows), max(len(r) for r in rows)
    tokens = torch.full((b, s), pad_id, dtype=torch.long)
    mask = torch.zeros((b, s), dtype=torch.bool)
    for i, (row, prompt) in enumerate(zip(rows, prompts)):
        tokens[i, :len(row)] = torch.tensor(row)
        if keep is None or keep[i]:
            mask[i, len(prompt):len(row)] = True
    zeros_bs, zeros_b = torch.zeros((b, s)), torch.zeros(b)
    return TrainBatch(tokens=tokens, prompt_lengths=torch.tensor([len(p) for p in prompts]),
                      response_lengths=torch.tensor([len(t) + 1 for t in targets]),
                      loss_mask=mask, sampler_logprobs=zeros_bs, group_ids=torch.arange(b),
                      rewards=zeros_b, advantages=zeros_b, old_logprobs=zeros_bs)
