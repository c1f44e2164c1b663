"""What a loss reads besides the student's log-probs: one typed record of per-token inputs
(prime-rl's LossInputs) and one of global normalisers.

    value, metrics = loss(logprobs, inputs, norms)        (losses/bound.py)

A bound loss names the LossInputs fields it needs and the Normalisers it reads; the trainer fills
the record field by field from its batch (train/step.py), so a renamed batch field fails there,
and refuses a batch without a needed field (`LossInputs.require`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from rlad_megatron.losses.aggregate import Count

NORMALISERS = ("num_seqs", "num_tokens", "distill_num_seqs", "distill_num_tokens")
"""The Normalisers fields: global counts the caller computes over DP ranks."""


@dataclass(frozen=True)
class LossInputs:
    """Per-token inputs [b, s] (aligned like tokens: position t scores tokens[:, t]) and per-row
    advantages [b]; None where the step has none."""

    loss_mask: Tensor                           # [b, s] bool: the loss's tokens
    old_logprobs: Optional[Tensor] = None       # [b, s] fp32: student at rollout time
    advantages: Optional[Tensor] = None         # [b] fp32 (RL; None in an SFT batch)
    teacher_logprobs: Optional[Tensor] = None   # [b, s] fp32
    teacher_mask: Optional[Tensor] = None       # [b, s] bool: teacher-anchored tokens
    ref_logprobs: Optional[Tensor] = None       # [b, s] fp32: reference model (KL term)
    distill_mask: Optional[Tensor] = None       # [b, s] bool: imitated teacher tokens

    @classmethod
    def from_record(cls, record) -> "LossInputs":
        """The fields of any object that has them all as attributes (e.g. data.batch.TrainBatch;
        an attribute it lacks is an AttributeError naming it)."""
        return cls(**{f.name: getattr(record, f.name) for f in dataclasses.fields(cls)})

    def require(self, needs: tuple[str, ...], loss: str) -> None:
        """ValueError naming the first field of `needs` that is None (loss: the loss's name)."""
        for name in needs:
            if getattr(self, name) is None:
                raise ValueError(f"loss {loss} needs {name}, which this batch does not have")

    def to(self, device: torch.device) -> "LossInputs":
        """The record with every set tensor on `device`."""
        return LossInputs(**{f.name: None if (t := getattr(self, f.name)) is None
                             else t.to(device) for f in dataclasses.fields(self)})


@dataclass(frozen=True)
class Normalisers:
    """Global counts a loss divides by (losses/aggregate.py): over every micro-batch and DP rank
    of the update; None: this call's own count (one call on the whole batch)."""

    num_seqs: Count = None              # sequences with a loss_mask token
    num_tokens: Count = None            # loss_mask tokens
    distill_num_seqs: Count = None      # sequences with a distill_mask token
    distill_num_tokens: Count = None    # distill_mask tokens
