"""Supervised batches: prompt + target completion + EOS, loss on the completion tokens only.

Used by `algorithm: sft` (gold solutions, e.g. to make the demo's teacher) and
`algorithm: sft_distill` (teacher-generated traces, rejection-sampled by reward: the paper's
offline-distillation baseline). Same alignment as every batch (data/batch.py): loss_mask[:, t]
is 1 where tokens[:, t] is a completion token (or the EOS after it). Its own type: an SFT step
has no rewards, advantages or old-policy log-probs, and its loss reads the mask alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from rlad_megatron.data.batch import RowBatch
from rlad_megatron.losses.inputs import LossInputs


@dataclass(frozen=True)
class SFTBatch(RowBatch):
    tokens: Tensor            # [b, s] int64: prompt, target, EOS, right padding
    prompt_lengths: Tensor    # [b] int64
    response_lengths: Tensor  # [b] int64: target tokens + the EOS
    loss_mask: Tensor         # [b, s] bool: the target tokens and EOS of the kept rows

    @classmethod
    def build(cls, prompts: list[list[int]], targets: list[list[int]], *, eos_id: int,
              pad_id: int, keep: list[bool] | None = None) -> "SFTBatch":
        """Right-padded [b, s] batch; rows with keep False have no loss tokens."""
        rows = [p + t + [eos_id] for p, t in zip(prompts, targets)]
        b, s = len(rows), max(len(r) for r in rows)
        tokens = torch.full((b, s), pad_id, dtype=torch.long)
        mask = torch.zeros((b, s), dtype=torch.bool)
        for i, (row, prompt) in enumerate(zip(rows, prompts)):
            tokens[i, :len(row)] = torch.tensor(row)
            if keep is None or keep[i]:
                mask[i, len(prompt):len(row)] = True
        return cls(tokens=tokens, prompt_lengths=torch.tensor([len(p) for p in prompts]),
                   response_lengths=torch.tensor([len(t) + 1 for t in targets]),
                   loss_mask=mask)

    def loss_inputs(self) -> LossInputs:
        return LossInputs(loss_mask=self.loss_mask)
