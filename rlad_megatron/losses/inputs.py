"""What a loss reads besides the student's log-probs: one typed record (prime-rl's LossInputs),
bound to each registered loss by the names of its tensor parameters.

    inputs = LossInputs(old_logprobs=..., advantages=..., loss_mask=..., teacher_logprobs=...)
    value, stats = fn(logprobs, **inputs.arguments_for(fn), **options, **normalisers)

A loss parameter annotated as a Tensor (other than `logprobs`) must be a field of LossInputs:
`check_loss_signature` refuses one that is not (LOSSES are checked when losses/ is imported), so a
renamed input fails at once instead of silently never being passed. The trainer fills the record
field by field from its batch (train/step.py), so a renamed batch field fails there.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from typing import Callable, Optional

from torch import Tensor

NORMALISERS = ("num_seqs", "num_tokens", "distill_num_seqs", "distill_num_tokens")
"""Count parameters a loss may take: global normalisers the caller computes over DP ranks."""


@dataclass(frozen=True)
class LossInputs:
    """Per-token inputs [b, s] (aligned like tokens: position t scores tokens[:, t]) and per-row
    advantages [b]; None where the step has none."""

    old_logprobs: Tensor                        # [b, s] fp32: student at rollout time
    advantages: Tensor                          # [b] fp32
    loss_mask: Tensor                           # [b, s] bool: the RL loss's tokens
    teacher_logprobs: Optional[Tensor] = None   # [b, s] fp32
    teacher_mask: Optional[Tensor] = None       # [b, s] bool: teacher-anchored tokens
    ref_logprobs: Optional[Tensor] = None       # [b, s] fp32: reference model (KL term)
    distill_mask: Optional[Tensor] = None       # [b, s] bool: imitated teacher tokens

    @classmethod
    def from_record(cls, record) -> "LossInputs":
        """The fields of any object that has them all as attributes (e.g. data.batch.TrainBatch;
        an attribute it lacks is an AttributeError naming it)."""
        return cls(**{f.name: getattr(record, f.name) for f in dataclasses.fields(cls)})

    def arguments_for(self, fn: Callable) -> dict[str, Tensor]:
        """The inputs `fn` takes, by parameter name; ValueError when a required one is None."""
        params = inspect.signature(fn).parameters
        out = {}
        for name in input_parameters(fn):
            value = getattr(self, name)
            if value is None and params[name].default is inspect.Parameter.empty:
                raise ValueError(f"loss {fn.__name__} needs {name}, which this batch does not have")
            out[name] = value
        return out


INPUT_FIELDS = tuple(f.name for f in dataclasses.fields(LossInputs))


def input_parameters(fn: Callable) -> list[str]:
    """The LossInputs fields among fn's parameters."""
    return [name for name in inspect.signature(fn).parameters if name in INPUT_FIELDS]


def check_loss_signature(fn: Callable) -> None:
    """TypeError when a tensor parameter of `fn` (besides the first, the student's log-probs) is
    not a LossInputs field: it would never be passed."""
    params = list(inspect.signature(fn).parameters.values())
    for p in params[1:]:
        if "Tensor" in str(p.annotation) and p.name not in INPUT_FIELDS:
            raise TypeError(f"loss {fn.__name__}: tensor parameter {p.name!r} is not a "
                            f"LossInputs field ({', '.join(INPUT_FIELDS)}); the trainer would "
                            "never pass it")
