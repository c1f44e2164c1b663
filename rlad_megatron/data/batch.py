"""The typed batch contract between rollout, data, models and losses: RolloutBatch, TrainBatch
(and data/sft_batch.py's SFTBatch), each a RowBatch: a frozen record of [b] and [b, s] tensors
whose rows can be selected, re-cut in width and split."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence, TypeVar, Union

import torch
from torch import Tensor

from rlad_megatron.data.selection import Selection, TrajectoryGates
from rlad_megatron.losses.inputs import LossInputs

RowIndex = Union[slice, Sequence[int], Tensor]
B = TypeVar("B", bound="RowBatch")
PER_ROW_FIELDS = frozenset({"prompt_lengths", "response_lengths", "group_ids", "rewards",
                            "advantages", "seq_alignment", "teacher_rows"})
"""Tensor fields of shape [b]; every other tensor field is [b, s] like tokens."""


@dataclass(frozen=True)
class RowBatch:
    """Row operations shared by every batch type: its tensor fields are [b] (PER_ROW_FIELDS)
    or [b, s] like `tokens`; other fields (statistics) are carried as they are."""

    tokens: Tensor            # [b, s] int64

    def __post_init__(self) -> None:
        b, s = self.tokens.shape
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, Tensor) or f.name == "tokens":
                continue
            expected = (b,) if f.name in PER_ROW_FIELDS else (b, s)
            if tuple(value.shape) != expected:
                raise ValueError(f"{type(self).__name__}.{f.name}: shape {tuple(value.shape)}, "
                                 f"expected {expected} (tokens is {(b, s)})")

    @property
    def batch_size(self) -> int:
        return self.tokens.shape[0]

    @property
    def seq_len(self) -> int:
        return self.tokens.shape[1]

    def select_rows(self: B, index: RowIndex) -> B:
        """The same batch type holding the rows `index` (slice, list or tensor; DP sharding).
        Non-tensor fields (scalar statistics) are copied as they are."""
        return dataclasses.replace(self, **{
            f.name: _take(getattr(self, f.name), index) for f in dataclasses.fields(self)})

    def with_width(self: B, width: int) -> B:
        """The same rows with every [b, s] field cut to `width` columns, or right-padded with 0
        (masks off) when wider; width must hold every row's tokens when it cuts."""
        def fit(name: str, value):
            per_token = isinstance(value, Tensor) and name not in PER_ROW_FIELDS
            return fit_columns(value, width) if per_token else value
        return dataclasses.replace(self, **{f.name: fit(f.name, getattr(self, f.name))
                                            for f in dataclasses.fields(self)})

    def split(self: B, micro_batch_size: int) -> list[B]:
        """Consecutive micro-batches of micro_batch_size rows (the last one may be smaller)."""
        if micro_batch_size < 1:
            raise ValueError(f"micro_batch_size: {micro_batch_size} must be >= 1")
        return [self.select_rows(slice(i, i + micro_batch_size))
                for i in range(0, self.batch_size, micro_batch_size)]

    def loss_inputs(self) -> LossInputs:
        """What a loss reads from this batch (losses/inputs.py)."""
        raise NotImplementedError


@dataclass(frozen=True)
class RolloutBatch(RowBatch):
    """What generation returns: b sequences of s tokens, prompt then response then padding.

    Alignment, for every per-token tensor [b, s] here and in TrainBatch: position t holds the
    value for tokens[:, t], i.e. log p(tokens[t] | tokens[:t]). Position 0, prompt positions and
    padding have loss_mask == 0; the loss reads positions prompt_len .. prompt_len + resp_len - 1.
    The model-side shift (logits at t-1 score token t) is done once, in models/, never in losses.
    Rows of one prompt share a group id (GRPO groups, not necessarily contiguous).
    """

    tokens: Tensor            # [b, s] int64
    prompt_lengths: Tensor    # [b] int64
    response_lengths: Tensor  # [b] int64
    loss_mask: Tensor         # [b, s] bool: response tokens
    sampler_logprobs: Tensor  # [b, s] fp32: the sampler's log-probs of tokens (0 off the mask)
    group_ids: Tensor         # [b] int64



def _take(value, index: RowIndex):
    if not isinstance(value, Tensor):
        return value
    if isinstance(index, slice):
        return value[index]
    return value[torch.as_tensor(index, dtype=torch.long, device=value.device)]


@dataclass(frozen=True)
class TrainBatch(RolloutBatch):
    """A RolloutBatch after scoring, advantages, log-prob passes and selection (same alignment).

    teacher_mask None means anchor every loss token (the paper's policy); the selection
    statistics are None until data.selection has run (`with_selection`).

    With teacher trajectories (rollout.teacher_samples): teacher_rows marks them, loss_mask is 0 on
    them (the RL loss sees the student's rows only), and distill_mask holds the response tokens
    of the teacher rows the gates selected (`gates`, statistics of the batch gating ran on).
    """

    rewards: Tensor                          # [b] fp32
    advantages: Tensor                       # [b] fp32
    old_logprobs: Tensor | None              # [b, s] fp32: student at rollout time; None: the
                                             # update's own forward (config/on_policy.py)
    teacher_logprobs: Tensor | None = None   # [b, s] fp32
    ref_logprobs: Tensor | None = None       # [b, s] fp32: reference model, for the KL term
    teacher_mask: Tensor | None = None       # [b, s] bool: 1 where the ratio is teacher-anchored
    seq_alignment: Tensor | None = None      # [b] fp32: mean over loss tokens of lp_T - lp_old
    selected_frac: float | None = None       # teacher_mask mean over the loss tokens of the
                                             # batch selection ran on (not re-computed by split)
    teacher_rows: Tensor | None = None       # [b] bool: teacher trajectories
    distill_mask: Tensor | None = None       # [b, s] bool: selected teacher rows' response tokens
    gates: TrajectoryGates | None = None     # data.selection.gate_trajectories of the batch

    @classmethod
    def from_rollout(cls, rollout: RolloutBatch, **fields) -> "TrainBatch":
        """TrainBatch with the rollout's fields and the given new ones."""
        base = {f.name: getattr(rollout, f.name) for f in dataclasses.fields(RolloutBatch)}
        return cls(**base, **fields)

    def loss_inputs(self) -> LossInputs:
        return LossInputs.from_record(self)

    def with_selection(self, selection: Selection) -> "TrainBatch":
        """This batch with the teacher mask and statistics of a data.selection result."""
        return dataclasses.replace(self, teacher_mask=selection.teacher_mask,
                                   seq_alignment=selection.seq_alignment,
                                   selected_frac=selection.selected_frac)


def fit_columns(t: Tensor, width: int, fill=0) -> Tensor:
    """[b, s] -> [b, width]: the first `width` columns, right-padded with `fill` when wider."""
    return t[:, :width] if t.shape[1] >= width else _pad_columns(t, width, fill)


def _pad_columns(t: Tensor, width: int, value) -> Tensor:
    if t.dim() < 2 or t.shape[1] == width:
        return t
    pad = torch.full((t.shape[0], width - t.shape[1]), value, dtype=t.dtype, device=t.device)
    return torch.cat([t, pad], dim=1)


def interleave_groups(student: RolloutBatch, teacher: RolloutBatch, *, group_size: int,
                      teacher_samples: int, pad_token_id: int = 0) -> tuple[RolloutBatch, Tensor]:
    """One RolloutBatch of n prompts from the student's n*G rows and the teacher's n*K rows (both
    consecutive groups, as generate returns them): per prompt its G student rows then its K teacher
    rows, so that mini- and micro-batches mix both kinds. The narrower batch is right-padded
    (pad_token_id, masks 0). Returns the batch and teacher_rows [n*(G+K)] bool."""
    g, k = group_size, teacher_samples
    n = student.batch_size // g
    if student.batch_size != n * g or teacher.batch_size != n * k:
        raise ValueError(f"interleave_groups: {student.batch_size} student rows and "
                         f"{teacher.batch_size} teacher rows are not {n} prompts of {g} + {k}")
    if not torch.equal(student.group_ids[::g], teacher.group_ids[::k]):
        raise ValueError("interleave_groups: the student's and the teacher's group ids differ")
    width = max(student.seq_len, teacher.seq_len)
    dev = student.tokens.device
    order = torch.cat([torch.arange(n, device=dev)[:, None] * g + torch.arange(g, device=dev),
                       n * g + torch.arange(n, device=dev)[:, None] * k +
                       torch.arange(k, device=dev)], dim=1).reshape(-1)
    merged = {}
    for f in dataclasses.fields(RolloutBatch):
        a, b = getattr(student, f.name), getattr(teacher, f.name)
        fill = pad_token_id if f.name == "tokens" else 0
        merged[f.name] = torch.cat([_pad_columns(a, width, fill),
                                    _pad_columns(b, width, fill)])[order]
    teacher_rows = torch.cat([torch.zeros(n * g, dtype=torch.bool, device=dev),
                              torch.ones(n * k, dtype=torch.bool, device=dev)])[order]
    return RolloutBatch(**merged), teacher_rows
