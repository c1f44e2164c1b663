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


def _decode_only(attn, q: Tensor, k: Tensor, v: Tensor, seqlens_k: Tensor,
                 block_table: Tensor) -> Tensor:
    """q [n_pad, 1, h, d] (one query per request) -> [n_pad, 1, h, d]; rows past the live
    requests (CUDA-graph padding) are 0."""
    n = min(q.shape[0], seqlens_k.shape[0])
    heads, d = q.shape[-2], q.shape[-1]
    block, groups = k.shape[1], k.shape[2]
    per_group = heads // groups
    out = torch.zeros_like(q)
    if n == 0:
        return out
    lengths = seqlens_k[:n].to(torch.long)
    blocks = max(1, int(math.ceil(int(lengths.max()) / block)))  # one host read per layer call
    # unused table entries (-1) read block 0: masked below, and finite (the buffers start
    # zeroed, rollout/continuous.py, and no NaN is ever stored: see the padding rows below)
    table = block_table[:n, :blocks].reshape(-1).to(torch.long).clamp(min=0)
    past = torch.arange(blocks * block, device=q.device)[None] >= lengths[:, None]  # [n, L]

    def gathered(cache: Tensor) -> Tensor:  # [n, g, L, d], each (row, group) contiguous
        rows = cache.index_select(0, table).view(n, blocks * block, groups, d)
        return rows.permute(0, 2, 1, 3).contiguous()

    keys, values = gathered(k), gathered(v)
    query = q[:n, 0].reshape(n, groups, per_group, d)
    scores = torch.matmul(query, keys.transpose(-1, -2)) * _scale(attn, d)  # [n, g, r, L]
    scores.masked_fill_(past[:, None, None], float("-inf"))
    context = torch.matmul(scores.softmax(-1), values)  # [n, g, r, d]
    # CUDA-graph padding requests (length 0) attend to nothing: 0, not the softmax's NaN
    context = context.masked_fill((lengths == 0)[:, None, None, None], 0.0)
    out[:n, 0] = context.reshape(n, heads, d)
    return out


def _with_prefill(attn, q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Tensor,
                  seqlens_k: Tensor, block_table: Tensor) -> Tensor:
    """q [T, 1, h, d] packed (each request's new tokens, a prefill or one decode token) ->
    [T, 1, h, d], causal within each request's new tokens."""
    out = torch.zeros_like(q)
    heads, d = q.shape[-2], q.shape[-1]
    block, groups = k.shape[1], k.shape[2]
    per_group = heads // groups
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
def dynamic_attention():
    """Megatron attention with a dynamic inference context runs here: on a CPU-only torch, the
    torch paged attention in place of flash-attn (restored on exit); on a GPU, nothing changes."""
    if not cpu_shims.needed():
        yield
        return
    from megatron.core.transformer import attention

    saved = (attention.Attention.flash_decode_and_prefill, attention.HAVE_FA3)
    attention.Attention.flash_decode_and_prefill = paged_attention
    attention.HAVE_FA3 = True  # only read by the version assert and the kernel we replace
    try:
        yield
    finally:
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
