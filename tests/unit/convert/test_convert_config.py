"""HF config.json <-> ModelSpec both ways, the key maps' per-rank windows, and their errors.

A failure in the mapping tests means an imported model would silently compute something else
(wrong head_dim, RoPE, tying); a failure in the window test means a TP rank would read the wrong
rows or columns of a Hugging Face tensor during a distributed import."""

import json
from types import SimpleNamespace

import pytest
import torch

from hf_models import CASES, tiny_config
from rlad_megatron.convert.commands import parse_size
from rlad_megatron.convert.hf_config import hf_config_from_spec, spec_from_hf_config
from rlad_megatron.convert.keymaps import (FC1, QKV, ROW, VOCAB, find_param_entry,
                                           global_entries, hf_shapes, layer_map, merge_qkv,
                                           split_global)
from rlad_megatron.convert.layout import param_shard
from rlad_megatron.models.config import padded_vocab_size
from rlad_megatron.models.spec import PRESETS, RopeScaling


def _case_config(case, **kw):
    c = CASES[case]
    return tiny_config(c["arch"], c["vocab"], c["tied"], c.get("rope_scaling"),
                   c.get("theta", 10000.0), c.get("head_dim"), **kw).to_dict()


def test_hf_configs_map_to_the_expected_specs():
    llama = spec_from_hf_config(_case_config("llama"))
    assert (llama.arch, llama.num_query_groups, llama.kv_channels, llama.head_dim) == \
        ("llama", 2, None, 16)
    assert llama.rope_scaling == RopeScaling(factor=8.0) and llama.rotary_base == 500000.0
    assert not llama.tie_embeddings and not llama.qkv_bias and not llama.qk_layernorm
    qwen2 = spec_from_hf_config(_case_config("qwen2"))
    assert qwen2.qkv_bias and qwen2.vocab_size == 250 and qwen2.norm_eps == 1e-6
    qwen3 = spec_from_hf_config(_case_config("qwen3"))
    assert qwen3.qk_layernorm and qwen3.tie_embeddings and qwen3.kv_channels == 32


@pytest.mark.parametrize("name", [n for n in PRESETS if not n.startswith("tiny")])
def test_spec_to_hf_config_and_back_is_the_identity_for_every_preset(name, tmp_path):
    from transformers import AutoConfig

    spec = PRESETS[name]
    cfg = hf_config_from_spec(spec, dtype="bf16")
    back = spec_from_hf_config(cfg)
    assert {**back.to_dict(), "name": name} == spec.to_dict()
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    hf = AutoConfig.from_pretrained(str(tmp_path))  # transformers accepts every field
    assert type(hf).__name__.lower().startswith(spec.arch)
    assert hf.num_key_value_heads == spec.num_query_groups
    assert getattr(hf, "head_dim", spec.head_dim) == spec.head_dim
    assert hf.tie_word_embeddings == spec.tie_embeddings
    assert (hf.rope_scaling or {}).get("rope_type") == ("llama3" if spec.rope_scaling else None)
    assert cfg["torch_dtype"] == "bfloat16"


def test_export_config_keeps_the_source_fields_a_spec_does_not_hold():
    base = {**_case_config("qwen2"), "bos_token_id": 7, "eos_token_id": [8, 9], "use_cache": False}
    cfg = hf_config_from_spec(spec_from_hf_config(base), dtype="fp32", base=base)
    assert (cfg["bos_token_id"], cfg["eos_token_id"], cfg["use_cache"]) == (7, [8, 9], False)
    assert cfg["architectures"] == ["Qwen2ForCausalLM"] and cfg["torch_dtype"] == "float32"


@pytest.mark.parametrize("change,message", [
    ({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]},
     r"src/config.json: model_type 'gpt2' \(architectures \['GPT2LMHeadModel'\]\) is not "
     r"supported"),
    ({"architectures": ["MistralForCausalLM"]}, r"architectures\[0\] 'MistralForCausalLM'"),
    ({"hidden_act": "gelu"}, r"hidden_act='gelu' is not supported"),
    ({"attention_bias": True}, r"attention_bias=True is not supported"),
    ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, r"rope_type='linear'"),
    ({"rope_scaling": {**CASES["llama"]["rope_scaling"], "high_freq_factor": 2.0}},
     r"rope_scaling.high_freq_factor=2.0 is not supported"),
    ({"use_sliding_window": True}, r"use_sliding_window=True"),
    ({"rope_theta": 10000.5}, r"rope_theta=10000.5"),
    ({"num_key_value_heads": 3}, r"num_query_groups: 3 does not divide .*num_attention_heads: 4"),
])
def test_unsupported_configs_are_refused_naming_file_and_key(change, message):
    cfg = {**_case_config("llama"), **change}
    with pytest.raises(ValueError, match=message):
        spec_from_hf_config(cfg, source="src/config.json")


def _fake_chunk(num_layers, first=0):
    return SimpleNamespace(decoder=SimpleNamespace(
        layers=[SimpleNamespace(layer_number=first + i + 1) for i in range(num_layers)]))


def _random_hf(spec, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(s, generator=g) for n, s in hf_shapes(spec).items()}


def _sliced_shard(entry, full, spec, tp, rank, padded):
    """The test oracle: this rank's shard cut from the full fused (TP=1) tensor by plain
    slicing, as megatron's column/row-parallel split of a TP=1 model would."""
    if entry.kind == QKV:
        return merge_qkv(*full, spec.num_query_groups).chunk(tp)[rank]
    if entry.kind == FC1:
        return torch.cat([full[0].chunk(tp)[rank], full[1].chunk(tp)[rank]])
    if entry.kind == ROW:
        return full[0].chunk(tp, dim=1)[rank]
    if entry.kind == VOCAB:
        pad = full[0].new_zeros(padded - full[0].shape[0], *full[0].shape[1:])
        return torch.cat([full[0], pad]).chunk(tp)[rank]
    return full[0]


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("tp", [1, 2])
def test_rank_windows_equal_the_sliced_shards(case, tp):
    """keymaps.rank_shard reads windows; slicing the full fused tensors gives the same shards."""
    spec = spec_from_hf_config(_case_config(case, layers=3))
    weights = _random_hf(spec)

    def read(name, rows, cols):
        t = weights[name]
        return t[rows or slice(None)] if cols is None else t[rows or slice(None), cols]

    padded = padded_vocab_size(spec.vocab_size, spec.make_vocab_size_divisible_by, tp)
    chunk = _fake_chunk(spec.num_layers - 1, first=1)  # a second PP stage: global l + 1
    names = [e.local for e in global_entries(spec)] + (
        ["output_layer.weight"] if spec.tie_embeddings else [])
    names += [f"decoder.layers.{i}.{e.local}" for i in range(spec.num_layers - 1)
              for e in layer_map(spec)]
    for rank in range(tp):
        for name in names:
            got, hf_names = param_shard(chunk, name, read, spec=spec, tp=tp, tp_rank=rank,
                                        padded_vocab=padded)
            entry, local = find_param_entry(spec, name)
            layer = "" if local is None else f"model.layers.{local + 1}."
            assert hf_names == [layer + n for n in entry.hf]
            want = _sliced_shard(entry, [weights[n] for n in hf_names], spec, tp, rank, padded)
            assert torch.equal(got, want), f"{case} tp={tp} rank={rank} {name}"


@pytest.mark.parametrize("case", list(CASES))
def test_split_global_inverts_the_fusion(case):
    spec = spec_from_hf_config(_case_config(case))
    w = _random_hf(spec)
    p = "model.layers.1."
    qkv = merge_qkv(*(w[p + f"self_attn.{x}_proj.weight"] for x in "qkv"), spec.num_query_groups)
    entry, _ = find_param_entry(spec, "decoder.layers.0.self_attention.linear_qkv.weight")
    for got, x in zip(split_global(entry, qkv, spec), "qkv"):
        assert torch.equal(got, w[p + f"self_attn.{x}_proj.weight"])
    entry, _ = find_param_entry(spec, "decoder.layers.0.mlp.linear_fc1.weight")
    gate, up = split_global(entry, torch.cat([w[p + "mlp.gate_proj.weight"],
                                              w[p + "mlp.up_proj.weight"]]), spec)
    assert torch.equal(gate, w[p + "mlp.gate_proj.weight"])
    assert torch.equal(up, w[p + "mlp.up_proj.weight"])
    entry, _ = find_param_entry(spec, "embedding.word_embeddings.weight")
    padded = torch.cat([w["model.embed_tokens.weight"], torch.zeros(6, spec.hidden_size)])
    assert torch.equal(split_global(entry, padded, spec)[0], w["model.embed_tokens.weight"])


def test_unknown_megatron_parameter_is_named():
    spec = spec_from_hf_config(_case_config("llama"))
    with pytest.raises(KeyError, match=r"layers.0.self_attention.q_layernorm.weight has no"):
        find_param_entry(spec, "decoder.layers.0.self_attention.q_layernorm.weight")


@pytest.mark.parametrize("text,expected", [("5GB", 5 * 10 ** 9), ("500MiB", 500 * 2 ** 20),
                                           ("40KB", 40_000), ("1234", 1234)])
def test_shard_sizes_parse_like_hugging_face(text, expected):
    assert parse_size(text) == expected
    with pytest.raises(ValueError, match="--max-shard-size"):
        parse_size("five gigs")
