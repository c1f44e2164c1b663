"""Batch layouts of generation: prompts in (left or right padded, or lists), the left-padded
working layout with its masks and positions, and the right-padded RolloutBatch layout out.

Working layout (inside generate): prompts LEFT-padded to the longest prompt P, so that one
prefill forward ends every row at column P - 1 and every decode step writes all rows to the same
KV-cache slot. `valid` [b, L] marks real tokens; pad keys are masked explicitly
(True = masked, megatron's convention). Positions count real tokens only (learned absolute
embeddings would use them); megatron's RoPE ignores position ids and rotates by column (cache
slot), which shifts each row by its pad count and leaves attention unchanged: RoPE scores depend
only on relative positions.

Every function here keeps its inputs' device (the decode loop's tensors live on the compute
device); the masks, positions and shifts are made there, never on the host.

Output layout (RolloutBatch): row i is prompt_i, then response_i, then padding, starting at
column 0, so a plain causal forward over it (models/forward.py) sees each sequence unshifted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

import torch
from torch import Tensor

PromptsIn = Union[Tensor, Sequence[Sequence[int]], Sequence[Tensor]]


@dataclass(frozen=True)
class LeftPadded:
    """Prompts in the working layout."""

    tokens: Tensor  # [b, P] int64, pad_id on the left
    lengths: Tensor  # [b] int64, real tokens per row (>= 1)

    @property
    def valid(self) -> Tensor:
        """[b, P] bool: real tokens."""
        p = self.tokens.shape[1]
        return torch.arange(p, device=self.tokens.device)[None] >= (p - self.lengths)[:, None]

    def to(self, device) -> "LeftPadded":
        return LeftPadded(self.tokens.to(device), self.lengths.to(device))

    def repeat(self, times: int) -> "LeftPadded":
        """Each row `times` times in a row (G samples per prompt)."""
        return LeftPadded(self.tokens.repeat_interleave(times, 0),
                          self.lengths.repeat_interleave(times, 0))


def left_padded(prompts: PromptsIn, *, prompt_lengths: Tensor | None = None,
                padding_side: str = "right", pad_id: int = 0) -> LeftPadded:
    """Normalise prompts to the working layout.

    prompts: a list of token-id lists (or 1-d tensors), or a padded [b, P] int64 tensor whose
    real tokens are the first (padding_side="right") or last ("left") prompt_lengths[i] of row i;
    prompt_lengths None means every row is full."""
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side: {padding_side!r}, expected 'left' or 'right'")
    if isinstance(prompts, Tensor):
        if prompts.dim() != 2:
            raise ValueError(f"prompts: a [b, P] tensor expected, got shape {tuple(prompts.shape)}")
        b, p = prompts.shape
        lengths = (torch.full((b,), p, dtype=torch.long) if prompt_lengths is None
                   else torch.as_tensor(prompt_lengths, dtype=torch.long))
        if lengths.shape != (b,) or bool((lengths > p).any()):
            raise ValueError(f"prompt_lengths: {lengths.tolist()} do not fit prompts of shape "
                             f"{(b, p)}")
        rows = [prompts[i, :n] if padding_side == "right" else prompts[i, p - n:]
                for i, n in enumerate(lengths.tolist())]
    else:
        rows = [torch.as_tensor(row, dtype=torch.long) for row in prompts]
    if not rows:
        raise ValueError("prompts: empty batch")
    empty = [i for i, row in enumerate(rows) if len(row) == 0]
    if empty:
        raise ValueError(f"prompts: rows {empty} are empty; every prompt needs >= 1 token")
    width = max(len(row) for row in rows)
    tokens = torch.full((len(rows), width), pad_id, dtype=torch.long)
    for i, row in enumerate(rows):
        tokens[i, width - len(row):] = row.long()
    return LeftPadded(tokens, torch.tensor([len(row) for row in rows], dtype=torch.long))


def positions(valid: Tensor) -> Tensor:
    """[b, L] int64 position ids counting real tokens only (0 on padding)."""
    return (valid.long().cumsum(1) - 1).clamp(min=0)


def prefill_mask(valid: Tensor) -> Tensor:
    """[b, 1, L, L] bool, True = masked: causal, and pad keys."""
    n = valid.shape[1]
    causal = torch.triu(torch.ones(n, n, dtype=torch.bool, device=valid.device), diagonal=1)
    return causal[None, None] | ~valid[:, None, None, :]


def decode_mask(valid: Tensor) -> Tensor:
    """[b, 1, 1, L] bool for one new query at the end: pad keys masked."""
    return ~valid[:, None, None, :]


def working_buffers(prompts: LeftPadded, new_tokens: int, pad_id: int):
    """The decode loops' outputs in the working layout, on the prompts' device: seq [b, P + N]
    int64 (the left-padded prompts, then pad_id), log-probs and filtered log-probs [b, P + N]
    float64 zeros."""
    b, p = prompts.tokens.shape
    seq = torch.full((b, p + new_tokens), pad_id, dtype=torch.long, device=prompts.tokens.device)
    seq[:, :p] = prompts.tokens
    lp = torch.zeros((b, p + new_tokens), dtype=torch.float64, device=prompts.tokens.device)
    return seq, lp, torch.zeros_like(lp)


def right_padded(values: Tensor, start: Tensor, lengths: Tensor, fill) -> Tensor:
    """Row i of `values` [b, L] from column start[i], lengths[i] entries, moved to column 0 and
    followed by `fill`: [b, max(lengths)], on values' device (one host read: the width)."""
    width = int(lengths.max())
    cols = torch.arange(width, device=values.device)[None]
    src = (cols + start[:, None]).clamp(max=values.shape[1] - 1)
    out = values.gather(1, src)
    return torch.where(cols < lengths[:, None], out, torch.full_like(out, fill))
