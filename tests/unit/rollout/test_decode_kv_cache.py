"""runtime/mcore_compat.decode_kv_cache (keys cached with RoPE applied, the per-head cache
layout, grouped-query decode without expanding the keys), single process (TP = PP = 1): with
multi-head attention it changes no number of a generation, compared BITWISE with megatron's own
cache handling; with grouped-query attention the decode products are megatron's products in
another grouping (one [r, d] block of queries per group instead of r [1, d] rows), so the same
tokens come out with log-probs equal within fp32 round-off, and the attention itself equals
megatron's DotProductAttention in float64. A failure points at a megatron release whose attention
stores or reads the static cache differently (the wrappers' docstring lists what they rely on).
"""

import contextlib

import pytest
import torch

from distributed_helpers import process_group  # noqa: F401 (module fixture)
from rlad_megatron.models.build import build_teacher
from rlad_megatron.models.spec import get_preset
from rlad_megatron.rollout import GenerationConfig, generate_detailed
from rlad_megatron.rollout.layout import positions, prefill_mask
from rlad_megatron.rollout.pipeline import StageRunner
from rlad_megatron.runtime import mcore_compat

PROMPTS = [[5, 17, 99, 3, 42], [7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17], [200], [31, 41, 59]]


@pytest.fixture(scope="module")
def par():
    from rlad_megatron.runtime import ParallelConfig, destroy_parallel, init_parallel

    yield init_parallel(ParallelConfig(seed=3))
    destroy_parallel()


def _without_speedups(monkeypatch):
    monkeypatch.setattr(mcore_compat, "decode_kv_cache",
                        lambda chunks: contextlib.nullcontext())


@pytest.mark.parametrize("groups", [4, 2], ids=["mha", "gqa"])
@pytest.mark.parametrize("cfg", [
    dict(temperature=1.0, samples_per_prompt=2, micro_batch_size=3),
    dict(temperature=0.0),
    dict(temperature=0.8, top_k=20, top_p=0.9, eos_token_id=[1, 2, 3, 4, 5]),
], ids=["sampled", "greedy", "filtered-eos"])
def test_decode_kv_cache_gives_bitwise_the_same_generation(par, monkeypatch, groups, cfg):
    model = build_teacher(get_preset("tiny-llama", num_query_groups=groups), par)
    cfg = GenerationConfig(max_new_tokens=12, seed=5, progress=False, engine="static", **cfg)
    fast = generate_detailed(model, PROMPTS, cfg)
    _without_speedups(monkeypatch)
    slow = generate_detailed(model, PROMPTS, cfg)
    assert torch.equal(fast.batch.tokens, slow.batch.tokens)
    if groups == 4:  # multi-head: bitwise
        assert torch.equal(fast.batch.sampler_logprobs, slow.batch.sampler_logprobs)
        assert torch.equal(fast.filtered_logprobs, slow.filtered_logprobs)
    else:  # fp32 round-off of the regrouped products: |lp| ~ 5, a few ulp of the logits
        torch.testing.assert_close(fast.batch.sampler_logprobs, slow.batch.sampler_logprobs,
                                   rtol=0, atol=1e-5)
        torch.testing.assert_close(fast.filtered_logprobs, slow.filtered_logprobs, rtol=0,
                                   atol=1e-5)
    assert fast.kv_cache_bytes == slow.kv_cache_bytes > 0


@pytest.mark.parametrize("queries", [1, 3], ids=["decode", "prefill"])
def test_grouped_decode_attention_equals_megatrons_in_float64(par, queries):
    """The wrapped core attention on float64 inputs in the per-head cache layout, against
    megatron's DotProductAttention.forward on the same tensors (prefill: megatron's own call)."""
    model = build_teacher(get_preset("tiny-llama", num_query_groups=2), par)
    core = model.modules[0].decoder.layers[0].self_attention.core_attention.eval()
    heads, groups = core.num_attention_heads_per_partition, core.num_query_groups_per_partition
    assert heads > groups
    g = torch.Generator().manual_seed(0)
    b, length, dim = 3, 7, core.hidden_size_per_partition // heads

    def cache():  # [L, b, g, d] viewing [b, g, L, d] memory, as _per_head_memory lays it out
        return torch.randn(b, groups, length, dim, generator=g, dtype=torch.float64
                           ).permute(2, 0, 1, 3)

    query = torch.randn(queries, b, heads, dim, generator=g, dtype=torch.float64)
    key, value = cache(), cache()
    mask = torch.zeros(b, 1, queries, length, dtype=torch.bool)
    mask[0, ..., :2] = True  # row 0: two padded positions
    want = type(core).forward(core, query, key, value, mask)
    with torch.no_grad(), mcore_compat.decode_kv_cache(model.modules):
        assert "forward" in vars(core)
        got = core(query, key, value, mask)
    assert "forward" not in vars(core)
    assert got.shape == want.shape == (queries, b, heads * dim)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_decode_kv_cache_lays_the_cache_out_per_head_and_puts_megatron_back(par):
    model = build_teacher(get_preset("tiny-llama"), par)
    attn = model.modules[0].decoder.layers[0].self_attention
    runner = StageRunner(model)
    runner.start(2, 16, use_cache=True)
    valid = torch.ones(2, 3, dtype=torch.bool)
    with torch.no_grad(), mcore_compat.decode_kv_cache(model.modules):
        assert "_adjust_key_value_for_inference" in vars(attn)
        runner.forward(torch.tensor([[1, 2, 3], [4, 5, 6]]), positions(valid),
                       prefill_mask(valid))
    keys, values = runner.contexts[0].key_value_memory_dict[attn.layer_number]
    groups, dim = attn.num_query_groups_per_partition, attn.hidden_size_per_attention_head
    assert keys.shape == (16, 2, groups, dim)
    assert keys.stride() == (dim, groups * 16 * dim, 16 * dim, 1)  # [b, g, L, d] memory
    assert not {"_adjust_key_value_for_inference", "_allocate_memory"} & set(vars(attn))
