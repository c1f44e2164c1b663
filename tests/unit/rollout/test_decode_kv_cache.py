"""runtime/mcore_compat.decode_kv_cache (keys cached with RoPE applied, the per-head cache
layout) changes no number of a generation, single process (TP = PP = 1): compared
BITWISE with megatron's own cache handling. A failure points at a megatron release whose
attention stores or reads the static cache differently (the wrappers' docstring lists what they
rely on).
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
    cfg = GenerationConfig(max_new_tokens=12, seed=5, progress=False, **cfg)
    fast = generate_detailed(model, PROMPTS, cfg)
    _without_speedups(monkeypatch)
    slow = generate_detailed(model, PROMPTS, cfg)
    assert torch.equal(fast.batch.tokens, slow.batch.tokens)
    assert torch.equal(fast.batch.sampler_logprobs, slow.batch.sampler_logprobs)
    assert torch.equal(fast.filtered_logprobs, slow.filtered_logprobs)
    assert fast.kv_cache_bytes == slow.kv_cache_bytes > 0


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
