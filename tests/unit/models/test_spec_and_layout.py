"""Model specs, vocabulary padding and the HF <-> megatron fused layouts, in one process.

A failure in the layout tests means checkpoints would load with scrambled heads or MLP halves."""

import pytest
import torch

from rlad_megatron.convert.keymaps import find_param_entry, merge_qkv, rank_shard, split_qkv
from rlad_megatron.convert.layout import full_reader
from rlad_megatron.models.config import padded_vocab_size
from rlad_megatron.models.spec import PRESETS, ModelSpec, get_preset


@pytest.mark.parametrize("vocab,div,tp,expected", [
    (32000, 128, 1, 32000), (32000, 128, 3, 32256), (151936, 128, 8, 152576), (250, 128, 2, 256),
    (49152, 128, 3, 49152)])
def test_padded_vocab_is_the_next_multiple_of_divisor_times_tp(vocab, div, tp, expected):
    assert padded_vocab_size(vocab, div, tp) == expected


def test_presets_are_valid_and_parameter_counts_match_published_sizes():
    for spec in PRESETS.values():
        spec.validate()
    # published totals (tied embeddings counted once)
    assert abs(PRESETS["smollm2-135m"].num_parameters() - 134_515_008) == 0
    assert abs(PRESETS["llama3.1-8b"].num_parameters() / 8.03e9 - 1) < 0.01
    assert abs(PRESETS["llama3.1-405b"].num_parameters() / 405.9e9 - 1) < 0.01
    assert abs(PRESETS["qwen3-8b"].num_parameters() / 8.19e9 - 1) < 0.01


def test_spec_errors_name_the_key():
    with pytest.raises(ValueError, match=r"teacher.num_query_groups: 3 does not divide "
                                         r"teacher.num_attention_heads: 8"):
        get_preset("tiny-llama", num_attention_heads=8, num_query_groups=3).validate("teacher")
    with pytest.raises(ValueError, match=r"model.arch: 'gpt2' is not supported"):
        get_preset("tiny-llama", arch="gpt2").validate()
    with pytest.raises(ValueError, match=r"unknown model preset 'llama9'"):
        get_preset("llama9")
    with pytest.raises(ValueError, match=r"student: unknown field\(s\) num_heads"):
        ModelSpec.from_dict({**get_preset("tiny-llama").to_dict(), "num_heads": 4},
                            prefix="student")


def test_qkv_merge_groups_heads_and_split_inverts_it():
    nq, ng, d, h = 8, 2, 3, 5
    q = torch.arange(nq * d * h, dtype=torch.float64).view(nq * d, h)
    k = -torch.arange(ng * d * h, dtype=torch.float64).view(ng * d, h) - 1
    v = 1000 + torch.arange(ng * d * h, dtype=torch.float64).view(ng * d, h)
    qkv = merge_qkv(q, k, v, ng)
    # group 0: 4 query heads, then k_0, then v_0
    assert torch.equal(qkv[: 4 * d], q[: 4 * d])
    assert torch.equal(qkv[4 * d: 5 * d], k[:d])
    assert torch.equal(qkv[5 * d: 6 * d], v[:d])
    assert torch.equal(qkv[6 * d: 10 * d], q[4 * d:])
    q2, k2, v2 = split_qkv(qkv, ng, nq // ng, d)
    assert torch.equal(q2, q) and torch.equal(k2, k) and torch.equal(v2, v)


def test_fc1_shard_holds_this_ranks_gate_then_up_rows():
    spec = get_preset("tiny-llama", ffn_hidden_size=8)
    w = {"mlp.gate_proj.weight": torch.arange(8.0)[:, None],
         "mlp.up_proj.weight": 100 + torch.arange(8.0)[:, None]}
    entry, _ = find_param_entry(spec, "decoder.layers.0.mlp.linear_fc1.weight")
    shard = rank_shard(entry, "", full_reader(w.__getitem__), spec, tp=2, tp_rank=1,
                       padded_vocab=256)
    assert shard[:, 0].tolist() == [4, 5, 6, 7, 104, 105, 106, 107]
