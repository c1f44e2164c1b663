"""The reference policy pi_ref of the paper's Eq. 4 (beta * KL(pi_S || pi_ref)) without a third
resident model: the student's starting weights kept in host memory and swapped into the student
for a forward-only pass.

    reference = ReferenceWeights.snapshot(student)     # once, before any update (or resume load)
    with reference.swapped_into(student):              # the student now holds pi_ref's weights
        ref_lp = forward_logprobs(student, tokens, ...)
    # the student holds its own weights again, bit for bit

Why a swap (NeMo-RL keeps its reference model the same way, host-offloaded and loaded for the
reference pass): the reference has the student's architecture and layout, so this rank's shards
of the student's parameters are exactly the shards pi_ref needs; a third model would cost a full
copy of the student on the device for a pass that runs once per step. The cost here is host
memory for one copy of this rank's shards (pinned where CUDA is present, so the copies are
asynchronous DMA) and two device<->host copies of the shards per step. The swap exchanges the
contents in place, parameter by parameter, through one temporary of that parameter's size: the
device never holds two copies of the model, and megatron's DDP buffers (whose views the
parameters are) are never replaced. The optimizer's state and fp32 main parameters are not
touched; the swap back restores every parameter exactly.

On resume the snapshot is taken from the run's starting weights (student.checkpoint or the seeded
random init) before the training checkpoint is loaded (train/setup.py), so pi_ref is the same
model whether or not the run was interrupted.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

from rlad_megatron.models.build import BuiltModel


def _parameters(model: BuiltModel) -> list[torch.nn.Parameter]:
    return [p for chunk in model.modules for p in chunk.parameters()]


@dataclass
class ReferenceWeights:
    """This rank's shards of the reference weights, in host memory, in parameter order."""

    host: list[torch.Tensor]

    @classmethod
    def snapshot(cls, model: BuiltModel) -> "ReferenceWeights":
        pin = torch.cuda.is_available()
        host = []
        for p in _parameters(model):
            t = torch.empty(p.shape, dtype=p.dtype, device="cpu", pin_memory=pin)
            t.copy_(p.detach())
            host.append(t)
        return cls(host)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.host)

    def _swap(self, model: BuiltModel) -> None:
        params = _parameters(model)
        if len(params) != len(self.host):
            raise ValueError(f"reference weights: {len(self.host)} tensors for a model of "
                             f"{len(params)} parameters")
        with torch.no_grad():
            for p, h in zip(params, self.host):
                current = p.detach().clone()
                p.copy_(h, non_blocking=True)
                h.copy_(current, non_blocking=True)
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    @contextmanager
    def swapped_into(self, model: BuiltModel):
        """Within the block the model holds the reference weights (and this object the model's);
        both are swapped back on exit, also on an exception."""
        self._swap(model)
        try:
            yield model
        finally:
            self._swap(model)
