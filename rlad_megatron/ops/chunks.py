"""Chunked per-position statistics of vocab-sharded logits: where the memory bound comes from.

A call walks the positions of [b, s, V/tp] logits `chunk_size` sequence positions at a time: all b
rows together when the batch and sequence dimensions merge into one (contiguous logits, as
GPTModel returns them), else one batch row at a time. Each chunk is a 2D [n, n_valid] view (one
row per position, the real vocabulary entries only), upcast into an fp32 work buffer that is
allocated once per call and reused, so the extra memory is one [b, chunk, V/tp] fp32 chunk
whatever the sequence length.

Per chunk x [n, n_valid] (see `vocab_shard` for m_r, S_r, B_r):

    softmax_stats   m_r, S_r and r = max_v p_v, where p = softmax(x / T) comes from torch's
                    fused softmax kernel (one pass for max, exp, sum and scale: faster than
                    exp alone). The kernel scales by r = 1/S_kernel (its own, less accurate sum),
                    so S_r = sum_v p_v / r is re-summed with torch's pairwise sum; in backward the
                    global probabilities are p_v * exp((m_r - M) / T) / (r * S).
    entropy_stats   m_r, S_r, B_r from exp((x - m_r) / T) and its product with (x - m_r) / T.
"""

from __future__ import annotations

import math
from typing import Iterator, Optional

import torch

# fp32 bytes of one chunk's work buffer when chunk_size is None. On a GPU a large chunk keeps the
# kernels long; on a CPU a chunk that stays in the last-level cache makes the passes over it cheap.
DEFAULT_CHUNK_BYTES = {"cuda": 256 << 20, "cpu": 4 << 20}
# Unfused calls also keep a chunk within this fraction of the positions, so the fp32 work buffer
# adds at most ~1/16 of the logits' fp32 size to the gradient's own 1x.
MAX_CHUNK_FRACTION = 1 / 16


def default_chunk_size(positions: int, row_elements: int, device: torch.device,
                       fraction: Optional[float] = MAX_CHUNK_FRACTION) -> int:
    """Positions per chunk: an fp32 chunk of rows of `row_elements` within DEFAULT_CHUNK_BYTES
    and, when `fraction` is set, within that fraction of `positions`."""
    budget = DEFAULT_CHUNK_BYTES["cuda" if device.type == "cuda" else "cpu"]
    size = max(1, budget // max(1, 4 * row_elements))
    if fraction is not None:
        size = min(size, max(1, math.ceil(positions * fraction)))
    return min(size, max(positions, 1))


def spans(length: int, chunk_size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, length, chunk_size):
        yield start, min(start + chunk_size, length)


class ChunkPlan:
    """The chunks of a [b, s, V] tensor, as ranges [lo, hi) of flat (row-major [b, s]) positions."""

    def __init__(self, logits: torch.Tensor, chunk_size: Optional[int], n_valid: int):
        b, s, v = logits.shape
        try:
            logits.view(b * s, v)
            self.merged = True
        except RuntimeError:  # e.g. a transposed [s, b, V] tensor: walk one batch row at a time
            self.merged = False
        self.seq = s
        if chunk_size is None:
            rows = default_chunk_size(b * s, n_valid, logits.device)
        else:
            rows = chunk_size * b if self.merged else chunk_size
        if self.merged:
            self.ranges = list(spans(b * s, rows))
        else:
            self.ranges = [(i * s + lo, i * s + hi) for i in range(b) for lo, hi in spans(s, rows)]
        self.max_rows = max((hi - lo for lo, hi in self.ranges), default=0)

    def view(self, t: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        """Positions [lo, hi) of t [b, s, ...] as a [hi - lo, ...] view (never a copy)."""
        if self.merged:
            return t.view(-1, *t.shape[2:])[lo:hi]
        i = lo // self.seq
        return t[i, lo - i * self.seq:hi - i * self.seq]


class Workspace:
    """Reusable work buffers of one chunk, viewed per chunk as contiguous [n, n_valid]."""

    def __init__(self, numel: int, dtype: torch.dtype, device: torch.device, count: int):
        self.dtype = dtype
        self._flat = [torch.empty(numel, dtype=dtype, device=device) for _ in range(count)]

    def get(self, index: int, shape: torch.Size) -> torch.Tensor:
        return self._flat[index][: math.prod(shape)].view(shape)


def load_shifted(x: torch.Tensor, shift: torch.Tensor, temperature: float,
                 out: torch.Tensor) -> torch.Tensor:
    """out <- (x - shift) / T in out's (wider) dtype. The shift comes before the division so that
    the exponent keeps full precision: x/T - m/T would carry the rounding of |x / T|."""
    if x.dtype == out.dtype:
        torch.sub(x, shift, out=out)
    else:
        out.copy_(x)
        out.sub_(shift)
    if temperature != 1.0:
        out.div_(temperature)
    return out


def softmax_into(x: torch.Tensor, m: torch.Tensor, temperature: float,
                 out: torch.Tensor) -> torch.Tensor:
    """out <- softmax(x / T) over the last dimension (out contiguous, in the compute dtype).
    torch._softmax is the out= form of torch.softmax: it writes into the reused work buffer or
    straight into the gradient."""
    if x.dtype == out.dtype and temperature == 1.0 and x.is_contiguous():
        src = x
    elif temperature == 1.0:
        src = out.copy_(x)
    else:
        src = load_shifted(x, m.unsqueeze(-1), temperature, out)
    return torch._softmax(src, -1, False, out=out)


def softmax_stats(x: torch.Tensor, temperature: float, work: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(m_r, S_r, r) of a chunk x [n, n_valid] -> [n] each; `work` is [n, n_valid] scratch."""
    m = x.amax(-1).to(work.dtype)
    p = softmax_into(x, m, temperature, work)
    r = p.amax(-1)
    return m, p.sum(-1) / r, r


def entropy_stats(x: torch.Tensor, temperature: float, ws: Workspace
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(m_r, S_r, B_r) of a chunk x [n, n_valid] -> [n] each (two work buffers)."""
    m = x.amax(-1, keepdim=True).to(ws.dtype)
    shifted = load_shifted(x, m, temperature, ws.get(0, x.shape))  # (x - m_r) / T <= 0
    e = torch.exp(shifted, out=ws.get(1, x.shape))
    s = e.sum(-1)
    # the product overwrites the shifted buffer: torch's pairwise sum is more accurate than a
    # BLAS dot product over V/tp terms
    return m.squeeze(-1), s, -shifted.mul_(e).sum(-1)
