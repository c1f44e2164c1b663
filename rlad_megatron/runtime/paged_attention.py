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
    one stage's layers serves them. That method asserts there are no virtual pipeline stages;
    with them, each chunk holds a context of its own layers and `dynamic_attention` gives each
    chunk's attention its own offset for the generation.

The paged attention (`paged_attention`): queries are the step's packed tokens [T, 1, h, d]
(one per row in a decode-only step), keys and values megatron's blocks [n_blocks, block, g, d]
with each row's block table. Gathering every row's blocks at every layer and step copies the
whole cache, so `SlotCache` keeps a per-row copy in the static engine's per-head layout, into
which each call copies only the step's new tokens; rows with one new token then attend in one
batched product over the slots (free slots masked), rows with a prompt one by one, causal
within their new tokens. On the CPU the context is also built unpadded (`context_class`).
Softmax scale as megatron's (`softmax_scale`, else 1 / sqrt(d)); float32 throughout.
tests/dist/rollout/test_generate.py holds the engine to a float64 reference at DP=2, TP=2,
PP=2 and to the static engine.
"""

from __future__ import annotations

import contextlib

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
        self.index = None  # this step's placement (step_index)
        self.masks: dict[str, tuple] = {}  # this step's decode masks (decode_mask)

    def step_index(self, layer: int, seqlens_k: Tensor, new_counts: Tensor,
                   block_table: Tensor, block_size: int) -> tuple:
        """The step's placement, made at the stage's first layer (where a step starts) and
        reused by its other layers, which see the same rows: (n live rows, slots [n], lengths
        [n], and for each new token its slot, position, block and offset in the block)."""
        if self.first_layer is None:
            self.first_layer = layer
        if layer != self.first_layer and self.index is not None:
            return self.index
        n = int((seqlens_k > 0).sum())  # live rows first, CUDA-graph padding after
        lengths = seqlens_k[:n].to(torch.long)
        table = block_table[:n].to(torch.long)
        first_blocks = table[:, 0].tolist()
        live = set(first_blocks)
        self.owner = {b: s for b, s in self.owner.items() if b in live}
        free = sorted(set(range(self.slots)) - set(self.owner.values()))
        for b in first_blocks:
            if b not in self.owner:
                self.owner[b] = free.pop(0)
        device = seqlens_k.device
        slots = torch.tensor([self.owner[b] for b in first_blocks], dtype=torch.long,
                             device=device)
        counts = new_counts[:n].to(torch.long)
        new_from = lengths - counts
        row = torch.repeat_interleave(torch.arange(n, device=device), counts)
        pos = new_from[row] + torch.arange(len(row), device=device) - \
            (torch.cumsum(counts, 0) - counts)[row]
        block = table[row, pos // block_size]
        self.index = (n, slots, lengths, slots[row], pos, block, pos % block_size)
        self.masks = {}
        return self.index

    def decode_mask(self, which: str, slots: Tensor, lengths: Tensor) -> tuple[int, Tensor]:
        """(longest, past [slots, longest] bool: the key positions each slot does not attend)
        for this step's decoding rows (`which` names the row set: the same at every layer)."""
        if which not in self.masks:
            longest = int(lengths.max())
            held = torch.zeros(self.slots, dtype=torch.long, device=lengths.device)
            held[slots] = lengths
            past = torch.arange(longest, device=lengths.device)[None] >= held[:, None]
            self.masks[which] = (longest, past)  # free slots: all masked
        return self.masks[which]

    def store(self, attn, k: Tensor, v: Tensor, index: tuple) -> tuple[Tensor, Tensor]:
        """Copy the step's new keys and values of each live row from the blocks into its slot
        (index: step_index's); returns this layer's (K, V) [slots, g, max_length, d]."""
        key = (attn.layer_number, k.data_ptr())
        if key not in self.buffers:
            shape = (self.slots, k.shape[2], self.max_length, k.shape[3])
            self.buffers[key] = (k.new_zeros(shape), v.new_zeros(shape))
        keys, values = self.buffers[key]
        _, _, _, slot, pos, block, offset = index
        keys[slot, :, pos] = k[block, offset]
        values[slot, :, pos] = v[block, offset]
        return keys, values


class _Generation:
    """One generation's slot caches, one per dynamic context (keyed by the context's KV memory:
    a rank with virtual pipeline stages holds one context per chunk)."""

    def __init__(self, slots: int, max_length: int):
        self.slots, self.max_length = slots, max_length
        self.caches: dict[int, SlotCache] = {}

    def cache_of(self, k: Tensor) -> SlotCache:
        key = k.untyped_storage().data_ptr()
        if key not in self.caches:
            self.caches[key] = SlotCache(self.slots, self.max_length)
        return self.caches[key]


_SLOTS: list[_Generation] = []


def _record(attn, k: Tensor, v: Tensor, seqlens_k: Tensor, new_counts: Tensor,
            block_table: Tensor):
    """SlotCache.store for this call's live rows: (n, slots [n], K, V, lengths [n], its
    SlotCache)."""
    cache = _SLOTS[-1].cache_of(k)
    index = cache.step_index(attn.layer_number, seqlens_k, new_counts, block_table, k.shape[1])
    keys, values = cache.store(attn, k, v, index)
    n, slots, lengths = index[:3]
    return n, slots, keys, values, lengths, cache


def _one_query_each(attn, query: Tensor, slots: Tensor, lengths: Tensor, keys: Tensor,
                    values: Tensor, masks: tuple[int, Tensor]) -> Tensor:
    """query [m, h, d]: the last token of each of m rows (slots [m], keys up to lengths [m])
    -> [m, h, d]; one batched product over all slots, free ones masked, as the static engine's
    decode step."""
    m, heads, d = query.shape
    groups, size = keys.shape[1], keys.shape[0]
    longest, past = masks  # SlotCache.decode_mask
    placed = query.new_zeros(size, groups, heads // groups, d)
    placed[slots] = query.reshape(m, groups, heads // groups, d)
    scores = torch.matmul(placed, keys[:, :, :longest].transpose(-1, -2)) * _scale(attn, d)
    scores.masked_fill_(past[:, None, None], float("-inf"))
    context = torch.matmul(scores.softmax(-1), values[:, :, :longest])  # [slots, g, r, d]
    return context[slots].reshape(m, heads, d)  # free slots (NaN rows) are not read


def _causal(attn, query: Tensor, keys: Tensor, values: Tensor) -> Tensor:
    """One row's s new tokens query [s, h, d] against its L cached tokens keys/values [g, L, d]
    (the new ones last) -> [s, h, d], causal."""
    s, heads, d = query.shape
    groups, length = keys.shape[0], keys.shape[1]
    q = query.reshape(s, groups, heads // groups, d).permute(1, 2, 0, 3)  # [g, r, s, d]
    scores = torch.matmul(q, keys[:, None].transpose(-1, -2)) * _scale(attn, d)
    q_pos = torch.arange(length - s, length, device=query.device)[:, None]
    scores.masked_fill_(torch.arange(length, device=query.device)[None] > q_pos,
                        float("-inf"))
    context = torch.matmul(scores.softmax(-1), values[:, None])  # [g, r, s, d]
    return context.permute(2, 0, 1, 3).reshape(s, heads, d)


def paged_attention(attn, q: Tensor, k: Tensor, v: Tensor, max_seqlen_q, max_seqlen_k,
                    cu_seqlens_q: Tensor, cu_seqlens_k: Tensor, seqlens_k: Tensor,
                    block_table: Tensor, is_decode_only: bool) -> Tensor:
    """Attention.flash_decode_and_prefill's contract (module docstring), in torch: q [T, 1, h,
    d] packed (a decode-only step: one token per row) -> [T, 1, h, d]; padding rows 0. Rows with
    one new token (decodes) go through one batched product over the slots; rows with more (a
    prefill) one by one, causal within their new tokens."""
    assert not attn.training and block_table is not None
    n_rows = len(seqlens_k)
    counts = (torch.ones_like(seqlens_k) if is_decode_only else
              cu_seqlens_q[1:n_rows + 1] - cu_seqlens_q[:n_rows])
    n, slots, keys, values, lengths, cache = _record(attn, k, v, seqlens_k, counts,
                                                     block_table)
    out = torch.zeros_like(q)
    if n == 0:
        return out
    if is_decode_only:
        out[:n, 0] = _one_query_each(attn, q[:n, 0], slots, lengths, keys, values,
                                     cache.decode_mask("all", slots, lengths))
        return out
    counts_n = counts[:n].tolist()  # host reads: the step's shape, once per layer call
    starts = cu_seqlens_q[:n].tolist()
    single = [i for i in range(n) if counts_n[i] == 1]
    if single:
        rows = torch.tensor(single, dtype=torch.long, device=q.device)
        at = torch.tensor([starts[i] for i in single], dtype=torch.long, device=q.device)
        out[at, 0] = _one_query_each(attn, q[at, 0], slots[rows], lengths[rows], keys, values,
                                     cache.decode_mask("decoding", slots[rows], lengths[rows]))
    for i in (i for i in range(n) if counts_n[i] > 1):
        a, b, slot, length = starts[i], starts[i] + counts_n[i], slots[i], int(lengths[i])
        out[a:b, 0] = _causal(attn, q[a:b, 0], keys[slot, :, :length], values[slot, :, :length])
    return out


def _chunk_layer_offset(attn) -> int:
    """Attention._get_pp_layer_offset_for_inference for a layer of a virtual pipeline chunk: the
    number of layers before its chunk (set by `dynamic_attention`), so that each chunk's
    context is indexed from 0 by its own layers."""
    return attn._rlad_chunk_layer_offset


@contextlib.contextmanager
def dynamic_attention(chunks, slots: int, max_length: int):
    """Megatron attention with a dynamic inference context runs here, for one generation of at
    most `slots` live rows of `max_length` tokens on this rank's model chunks:
      * on a CPU-only torch, the torch paged attention in place of flash-attn, with its slot
        caches (dropped on exit); on a GPU megatron's kernels run;
      * with virtual pipeline stages (more than one chunk), each chunk holds a context of its
        own layers: megatron asserts that there are no virtual stages where it computes a
        stage's layer offset, so that offset is each chunk's own for the generation (its first
        layer's number - 1: what megatron computes for a plain pipeline stage).
    Everything is restored on exit."""
    from megatron.core.transformer import attention

    Attention = attention.Attention
    saved = (Attention.flash_decode_and_prefill, attention.HAVE_FA3,
             Attention._get_pp_layer_offset_for_inference)
    tagged = []
    if len(chunks) > 1:
        Attention._get_pp_layer_offset_for_inference = _chunk_layer_offset
        for chunk in chunks:
            layers = chunk.decoder.layers
            offset = layers[0].layer_number - 1 if len(layers) else 0
            for module in chunk.modules():
                if isinstance(module, Attention):
                    module._rlad_chunk_layer_offset = offset
                    tagged.append(module)
    if cpu_shims.needed():
        Attention.flash_decode_and_prefill = paged_attention
        attention.HAVE_FA3 = True  # only read by the version assert and the kernel we replace
    _SLOTS.append(_Generation(slots, max_length))
    try:
        yield
    finally:
        _SLOTS.pop()
        for module in tagged:
            del module._rlad_chunk_layer_offset
        (Attention.flash_decode_and_prefill, attention.HAVE_FA3,
         Attention._get_pp_layer_offset_for_inference) = saved


def context_class():
    """The DynamicInferenceContext class to build: megatron's on a GPU; on the CPU a subclass that
    pads a step's tokens and requests to no multiple (megatron rounds them up to 64 tokens and 4
    requests for its CUDA graphs and kernels: at the tail of a rollout, one live row would be
    computed as 32 or 64 tokens)."""
    from megatron.core.inference.contexts.dynamic_context import DynamicInferenceContext

    if not cpu_shims.needed():
        return DynamicInferenceContext

    class UnpaddedContext(DynamicInferenceContext):
        TOKEN_ROUNDER = 1
        REQUEST_ROUNDER = 1

    return UnpaddedContext


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
