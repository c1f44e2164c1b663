"""Every difference between megatron-core releases that rlad_megatron meets (0.16.1 .. 0.19).

CI pins 0.16.1 (the newest on Python 3.11); NGC containers ship 0.17-0.19 on Python 3.12. Calls
whose signature moved go through here, filtered by the callee's signature, so that call sites
stay version-free.
"""

from __future__ import annotations

import inspect
from functools import lru_cache

import torch
from packaging.version import Version

from rlad_megatron.runtime.devices import compute_device


@lru_cache(maxsize=None)
def mcore_version() -> Version:
    from importlib.metadata import version

    return Version(version("megatron-core"))


def _accepted(fn, kwargs: dict) -> dict:
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return kwargs
    return {k: v for k, v in kwargs.items() if k in params}


def local_layer_spec(*, qk_layernorm: bool, normalization: str = "RMSNorm"):
    """megatron's local (no transformer-engine) GPT layer spec."""
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    return get_gpt_layer_local_spec(**_accepted(get_gpt_layer_local_spec, dict(
        qk_layernorm=qk_layernorm, normalization=normalization)))


def te_layer_spec(*, qk_layernorm: bool):
    """megatron's transformer-engine GPT layer spec (GPU)."""
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_with_transformer_engine_spec

    return get_gpt_layer_with_transformer_engine_spec(
        **_accepted(get_gpt_layer_with_transformer_engine_spec, dict(qk_layernorm=qk_layernorm)))


def have_transformer_engine() -> bool:
    try:
        import transformer_engine.pytorch  # noqa: F401
    except Exception:
        return False
    return True


def gpt_model_kwargs(**kwargs) -> dict:
    """Keep only the GPTModel constructor arguments this release knows (pg_collection, vp_stage)."""
    from megatron.core.models.gpt import GPTModel

    return _accepted(GPTModel.__init__, kwargs)


class hidden_states_only:
    """Context manager: a last-stage GPTModel chunk returns its final (normed) hidden states
    [s, b, h] instead of logits, so the teacher's fused log-prob path can apply the output layer
    chunk by chunk. Relies on GPTModel._postprocess returning hidden states when
    `self.post_process` is False (0.16 .. 0.19); the decoder's final norm is built at construction
    and still applies."""

    def __init__(self, model):
        self.model = model
        self.saved = None

    def __enter__(self):
        self.saved = self.model.post_process
        self.model.post_process = False
        return self.model

    def __exit__(self, *exc):
        self.model.post_process = self.saved
        return False


def output_weight(model):
    """This rank's [V/tp, h] output-layer weight (the embedding when tied)."""
    if model.share_embeddings_and_output_weights:
        return model.shared_embedding_or_output_weight()
    return model.output_layer.weight


def gather_sequence_parallel(hidden, model):
    """Hidden states [s/tp, b, h] -> [s, b, h] when the model runs sequence parallel."""
    if not model.config.sequence_parallel:
        return hidden
    from megatron.core.tensor_parallel.mappings import gather_from_sequence_parallel_region

    return gather_from_sequence_parallel_region(hidden, tensor_parallel_output_grad=False)


class decode_kv_cache:
    """Context manager over model chunks: two changes to how megatron's static KV cache
    (StaticInferenceContext) is kept while generating, each an O(L)-per-step saving with the
    same numbers out (bitwise, on CPU: tests/unit/rollout/test_kv_cache.py). Everything is put
    back on exit. Checked against megatron-core 0.16.1 .. 0.19 (same method signatures).

    1. Keys are cached with RoPE applied. With static batching,
       Attention._adjust_key_value_for_inference stores the UNrotated key and returns
       k_pos_emb[:end], and Attention.forward then rotates all `end` cached keys of every layer at
       every step (apply_rotary_pos_emb: cos, sin, two products, a cat, and [L, b, g, d]
       temporaries). Here that method is wrapped on the instance: the new key [s, b, g, d] is
       rotated with k_pos_emb[start:start + s] (the same freqs rows, mscale and function megatron
       uses, element by element, so the cached keys are bitwise the keys megatron rotates) before
       it is stored, and the returned k_pos_emb is None, which Attention.forward reads as "no key
       rotation" (`if k_pos_emb is not None`); the query is rotated by megatron as before. Only
       for static batching without flash_decode (which rotates before storing itself) and
       without context parallelism; otherwise megatron's method runs unchanged. Callers pass no
       packed sequences (generation does not).
    2. The cache is laid out per head: Attention._allocate_memory returns the same logical
       [L_max, b, g, d] tensor, as a view of [b, g, L_max, d] memory. megatron's
       DotProductAttention (the local spec's core attention) views the keys as [b * g, d, L] for
       its baddbmm and the values as [b * g, L, d] for its bmm; with megatron's layout each
       (row, head) block is strided by b * g * d, and those batched products ran 4-5x slower at
       L ~ 300 (bench/rollout.py profile). Only where the core attention is DotProductAttention
       (transformer-engine's takes its own path).
    3. Grouped-query attention reads the cache per group. DotProductAttention.forward expands the
       keys and values to every query head (repeat_interleave: a copy of the whole cache per
       layer and step, in megatron's [L, b, h, d] layout, so the products read it strided
       again). For a decode step (one query per row, eval mode) the instance's forward is
       wrapped: the r = heads / groups queries of a group are one [r, d] block multiplied with
       the group's [L, d] keys and values where the cache holds them (the same baddbmm with
       megatron's softmax scale, megatron's own scale_mask_softmax in between). Prefill, training
       and MHA run megatron's forward unchanged."""

    def __init__(self, chunks):
        self.chunks = list(chunks)
        self.wrapped = []

    def __enter__(self):
        from megatron.core.transformer.attention import Attention
        from megatron.core.transformer.dot_product_attention import DotProductAttention

        for chunk in self.chunks:
            for module in chunk.modules():
                if (not isinstance(module, Attention) or module.attention_type != "self"
                        or "_adjust_key_value_for_inference" in vars(module)):
                    continue
                module._adjust_key_value_for_inference = _rotate_before_store(module)
                names = ["_adjust_key_value_for_inference"]
                if type(module.core_attention) is DotProductAttention:
                    module._allocate_memory = _per_head_memory(module)
                    names.append("_allocate_memory")
                    core = module.core_attention
                    if core.num_attention_heads_per_partition > \
                            core.num_query_groups_per_partition:
                        core.forward = _grouped_decode(core)
                        self.wrapped.append((core, ["forward"]))
                self.wrapped.append((module, names))
        return self

    def __exit__(self, *exc):
        for module, names in self.wrapped:
            for name in names:
                delattr(module, name)
        self.wrapped = []
        return False


def _per_head_memory(attn):
    def allocate(inference_max_sequence_length, batch_size, dim, dtype):
        memory = torch.empty(batch_size, attn.num_query_groups_per_partition,
                             inference_max_sequence_length, dim, dtype=dtype,
                             device=compute_device())
        return memory.permute(2, 0, 1, 3)  # [L_max, b, g, d], each (row, head) block contiguous

    return allocate


def _grouped_decode(core):
    """DotProductAttention.forward for a decode step without expanding the keys (change 3 of
    decode_kv_cache); any other call goes to megatron's forward."""
    original = type(core).forward.__get__(core)

    def forward(query, key, value, attention_mask, attn_mask_type=None, attention_bias=None,
                packed_seq_params=None):
        if (query.size(0) != 1 or core.training or attention_bias is not None
                or packed_seq_params is not None):
            return original(query, key, value, attention_mask, attn_mask_type, attention_bias,
                            packed_seq_params)
        _, b, heads, dim = query.shape
        length, groups = key.size(0), key.size(2)
        per_group = heads // groups
        q = query.reshape(b * groups, per_group, dim)  # head j reads group j // per_group
        k = key.permute(1, 2, 0, 3).reshape(b * groups, length, dim)  # a view per head layout
        v = value.permute(1, 2, 0, 3).reshape(b * groups, length, dim)
        scores = torch.baddbmm(torch.empty(b * groups, per_group, length, dtype=q.dtype,
                                           device=q.device),
                               q, k.transpose(1, 2), beta=0.0, alpha=core.softmax_scale)
        probs = core.scale_mask_softmax(scores.view(b, heads, 1, length), attention_mask,
                                        core.softmax_offset)
        context = torch.bmm(probs.view(b * groups, per_group, length), v)  # [b * g, r, d]
        return context.view(1, b, heads * dim)

    return forward


def _rope_mscale(attn) -> float:
    """The mscale megatron's attention passes to apply_rotary_pos_emb (1 unless YaRN)."""
    factor = getattr(attn, "_yarn_concentration_factor", None)  # 0.19 caches it here
    if factor is None:
        from megatron.core.transformer.attention import _yarn_get_concentration_factor_from_config

        factor = _yarn_get_concentration_factor_from_config(attn.config)
    return factor


def _rotate_before_store(attn):
    from megatron.core.models.common.embeddings.rope_utils import apply_rotary_pos_emb

    original = type(attn)._adjust_key_value_for_inference.__get__(attn)
    cp = getattr(getattr(attn, "pg_collection", None), "cp", None)
    mscale = _rope_mscale(attn)

    def adjust(inference_context, query, key, value, rotary_pos_emb, *args, **kwargs):
        ctx = inference_context if inference_context is not None else kwargs.get(
            "inference_params")
        if (ctx is None or rotary_pos_emb is None or not ctx.is_static_batching()
                or attn.config.flash_decode or (cp is not None and cp.size() > 1)):
            return original(inference_context, query, key, value, rotary_pos_emb, *args,
                            **kwargs)
        k_emb = rotary_pos_emb[1] if isinstance(rotary_pos_emb, tuple) else rotary_pos_emb
        if k_emb is not None:
            start = ctx.sequence_len_offset
            key = apply_rotary_pos_emb(key, k_emb[start:start + key.size(0)], config=attn.config,
                                       mscale=mscale, cp_group=cp)
        out = list(original(inference_context, query, key, value, rotary_pos_emb, *args,
                            **kwargs))
        if out[3] is not None:
            out[3] = (out[3][0], None)
        return tuple(out)

    return adjust
