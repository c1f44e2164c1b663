"""Megatron's dynamic inference context on this machine: a torch paged attention where megatron
wants flash-attn.

megatron-core's DynamicInferenceContext (a paged KV cache of fixed-size blocks; requests added and
removed at any step) is what rollout/continuous.py schedules rows on. What stands between it
and this machine:

  * Attention with a dynamic context asserts flash-attn >= 2.7.3 or FA3 and calls
     `Attention.flash_decode_and_prefill` (transformer/attention.py, megatron-core 0.16.1
     about lines 756 and 926). Without CUDA (`cpu_shims.needed()`), `dynamic_attention()` puts a
     torch paged attention in that method's place for the duration of a generation and lets the
     version assert pass; on a GPU it changes nothing and megatron's kernels run (flash-attn must
     then be installed: `check_dynamic_attention` says so before any work).
  * Pipeline stages need nothing: attention subtracts its stage's layer offset before it
    indexes the context (Attention._get_pp_layer_offset_for_inference), so a context made for
    one stage's layers serves them. Virtual pipeline stages are not supported by megatron's
    dynamic inference (that method asserts it), and refused in train/validate.py.

The paged attention (`paged_attention`): queries are the step's packed tokens [T, 1, h, d] (or
one per request in a decode-only step), keys and values the cache's blocks [n_blocks, block, g,
d] with each request's block table. Decode-only steps (every live row adds one token) run as
one batched product per step: each request's blocks are gathered into [n, g, L_max, d] and the
r = h / g queries of a group multiply its keys in place (no expansion per head), positions past
a request's length masked. Steps with prefill run request by request, causal within the new
tokens. Softmax scale as megatron's (`softmax_scale`, else 1 / sqrt(d)); float32 throughout.
tests/unit/rollout/test_continuous.py checks it against a plain causal forward of the same model.
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import Tensor

from rlad_megatron.runtime import cpu_shims


def _scale(attn, d: int) -> float:
    scale = getattr(attn, "softmax_scale", None)
    return scale if scale is not None else d ** -0.5


class SlotCache:
    """Per-row contiguous copies of the paged keys and values, for decode steps on the CPU.

    Gathering every live row's blocks into one batch at every layer and step copies the whole
    cache (that made the continuous engine 2x slower than the static one here). Instead each
    live row owns a slot of [slots, g, max_length, d] buffers per layer, in the per-head layout
    of the static engine's cache (runtime/mcore_compat.decode_kv_cache); each attention call
    copies only the step's new keys and values from megatron's blocks into it (a prefill: the
    whole prompt). A decode step then multiplies each slot's [r, d] queries with its keys where
    they are, over all slots (free ones masked), as the static engine does.
    A row's slot is keyed by its first KV block, which megatron gives it on admission and keeps
    until the row is released; a key no longer among the live rows frees its slot."""

    def __init__(self, slots: int, max_length: int):
        self.slots, self.max_length = slots, max_length
        self.owner: dict[int, int] = {}  # first block id -> slot
        self.buffers: dict[tuple, tuple[Tensor, Tensor]] = {}  # (layer, k's memory) -> K, V
        self.first_layer = None

    def slots_of(self, layer: int, first_blocks: list[int]) -> list[int]:
        """The slot of each live row (first_blocks: their first KV block ids), assigned at the
        stage's first layer, where a step starts."""
        if self.first_layer is None:
            self.first_layer = layer
        if layer == self.first_layer:
            live = set(first_blocks)
            self.owner = {b: s for b, s in self.owner.items() if b in live}
            free = sorted(set(range(self.slots)) - set(self.owner.values()))
            for b in first_blocks:
                if b not in self.owner:
                    self.owner[b] = free.pop(0)
        return [self.owner[b] for b in first_blocks]

    def store(self, attn, k: Tensor, v: Tensor, table: Tensor, new_from: Tensor,
              lengths: Tensor, slots: Tensor) -> tuple[Tensor, Tensor]:
        """Copy positions [new_from_i, lengths_i) of each live row i from the blocks into its
        slot; returns this layer's (K, V) [slots, g, max_length, d]."""
        key = (attn.layer_number, k.data_ptr())
        if key not in self.buffers:
            shape = (self.slots, k.shape[2], self.max_length, k.shape[3])
            self.buffers[key] = (k.new_zeros(shape), v.new_zeros(shape))
        keys, values = self.buffers[key]
        counts = lengths - new_from
        row = torch.repeat_interleave(torch.arange(len(lengths), device=k.device), counts)
        pos = new_from[row] + torch.arange(len(row), device=k.device) - \
            (torch.cumsum(counts, 0) - counts)[row]
        block = table[row, pos // k.shape[1]].to(torch.long)
        keys[slots[row], :, pos] = k[block, pos % k.shape[1]]
        values[slots[row], :, pos] = v[block, pos % k.shape[1]]
        return keys, values


_SLOTS: list[SlotCache] = []


def _record(attn, k: Tensor, v: Tensor, seqlens_k: Tensor, new_counts: Tensor,
            block_table: Tensor):
    """SlotCache.store for this call's live rows: (n, slots [n], K, V, lengths [n])."""
    n = int((seqlens_k > 0).sum())  # live rows first, CUDA-graph padding after
    lengths = seqlens_k[:n].to(torch.long)
    table = block_table[:n].to(torch.long)
    cache = _SLOTS[-1]
    slots = torch.tensor(cache.slots_of(attn.layer_number, table[:, 0].tolist()),
                         dtype=torch.long, device=k.device)
    keys, values = cache.store(attn, k, v, table, lengths - new_counts[:n].to(torch.long),
                               lengths, slots)
    return n, slots, keys, values, lengths


def _decode_only(attn, q: Tensor, k: Tensor, v: Tensor, seqlens_k: Tensor,
                 block_table: Tensor) -> Tensor:
    """q [n_pad, 1, h, d] (one query per request) -> [n_pad, 1, h, d]; rows past the live
    requests (CUDA-graph padding) are 0."""
    out = torch.zeros_like(q)
    heads, d = q.shape[-2], q.shape[-1]
    groups = k.shape[2]
    n, slots, keys, values, lengths = _record(attn, k, v, seqlens_k,
                                              torch.ones_like(seqlens_k), block_table)
    if n == 0:
        return out
    cache = _SLOTS[-1]
    longest = int(lengths.max())
    query = q.new_zeros(cache.slots, groups, heads // groups, d)
    query[slots] = q[:n, 0].reshape(n, groups, heads // groups, d)
    held = torch.zeros(cache.slots, dtype=torch.long, device=q.device)
    held[slots] = lengths
    scores = torch.matmul(query, keys[:, :, :longest].transpose(-1, -2)) * _scale(attn, d)
    past = torch.arange(longest, device=q.device)[None] >= held[:, None]  # free slots: all
    scores.masked_fill_(past[:, None, None], float("-inf"))
    context = torch.matmul(scores.softmax(-1), values[:, :, :longest])  # [slots, g, r, d]
    out[:n, 0] = context[slots].reshape(n, heads, d)  # free slots (NaN rows) are not read
    return out


def _with_prefill(attn, q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Tensor,
                  seqlens_k: Tensor, block_table: Tensor) -> Tensor:
    """q [T, 1, h, d] packed (each request's new tokens, a prefill or one decode token) ->
    [T, 1, h, d], causal within each request's new tokens."""
    out = torch.zeros_like(q)
    heads, d = q.shape[-2], q.shape[-1]
    block, groups = k.shape[1], k.shape[2]
    per_group = heads // groups
    _record(attn, k, v, seqlens_k, cu_seqlens_q[1:len(seqlens_k) + 1] -
            cu_seqlens_q[:len(seqlens_k)], block_table)
    starts = cu_seqlens_q.tolist()  # one host read per layer call
    lengths = seqlens_k.tolist()
    for i, length in enumerate(lengths[:len(starts) - 1]):
        a, b = starts[i], starts[i + 1]
        if length == 0 or b == a:
            continue
        blocks = block_table[i, :math.ceil(length / block)].to(torch.long)
        keys = k[blocks].reshape(-1, groups, d)[:length].transpose(0, 1)  # [g, L, d]
        values = v[blocks].reshape(-1, groups, d)[:length].transpose(0, 1)
        query = q[a:b, 0].reshape(b - a, groups, per_group, d).permute(1, 2, 0, 3)  # [g, r, s, d]
        scores = torch.matmul(query, keys[:, None].transpose(-1, -2)) * _scale(attn, d)
        q_pos = torch.arange(length - (b - a), length, device=q.device)[:, None]
        future = torch.arange(length, device=q.device)[None] > q_pos  # [s, L]
        scores.masked_fill_(future, float("-inf"))
        context = torch.matmul(scores.softmax(-1), values[:, None])  # [g, r, s, d]
        out[a:b, 0] = context.permute(2, 0, 1, 3).reshape(b - a, heads, d)
    return out


def paged_attention(attn, q: Tensor, k: Tensor, v: Tensor, max_seqlen_q, max_seqlen_k,
                    cu_seqlens_q: Tensor, cu_seqlens_k: Tensor, seqlens_k: Tensor,
                    block_table: Tensor, is_decode_only: bool) -> Tensor:
    """Attention.flash_decode_and_prefill's contract (module docstring), in torch."""
    assert not attn.training and block_table is not None
    if is_decode_only:
        return _decode_only(attn, q, k, v, seqlens_k, block_table)
    return _with_prefill(attn, q, k, v, cu_seqlens_q, seqlens_k, block_table)


@contextlib.contextmanager
def dynamic_attention(slots: int, max_length: int):
    """Megatron attention with a dynamic inference context runs here, for one generation of at
    most `slots` live rows of `max_length` tokens: on a CPU-only torch, the torch paged attention
    in place of flash-attn, with its SlotCache (restored and dropped on exit); on a GPU, nothing
    changes."""
    if not cpu_shims.needed():
        yield
        return
    from megatron.core.transformer import attention

    saved = (attention.Attention.flash_decode_and_prefill, attention.HAVE_FA3)
    attention.Attention.flash_decode_and_prefill = paged_attention
    attention.HAVE_FA3 = True  # only read by the version assert and the kernel we replace
    _SLOTS.append(SlotCache(slots, max_length))
    try:
        yield
    finally:
        _SLOTS.pop()
        attention.Attention.flash_decode_and_prefill, attention.HAVE_FA3 = saved


def check_dynamic_attention() -> None:
    """Refuse early where megatron's dynamic attention cannot run: on a GPU without flash-attn
    (>= 2.7.3) or FA3, and without einops (megatron rearranges its output with it)."""
    try:
        import einops  # noqa: F401
    except ImportError as e:
        raise ValueError("rollout.engine=continuous needs einops (pip install einops)") from e
    if cpu_shims.needed():
        return
    from megatron.core.transformer import attention
    from megatron.core.utils import is_fa_min_version

    if not (attention.HAVE_FA3 or is_fa_min_version("2.7.3")):
        raise ValueError("rollout.engine=continuous on a GPU needs flash-attn >= 2.7.3 or FA3 "
                         "(megatron's dynamic attention kernels); use rollout.engine=static")
