"""The one layout check (models/layout_check.py) that the trainer's build, `rlad plan` and
`rlad convert import` run. A failure means one of them would accept a layout megatron cannot
split, or refuse one without naming the key and both values."""

import pytest

from rlad_megatron.models.layout_check import (CLI_NAMES, check_model_layout,
                                               data_parallel_problem, model_layout_problems,
                                               possible_tp)
from rlad_megatron.models.spec import get_preset


def test_a_layout_that_divides_the_model_has_no_problem():
    spec = get_preset("tiny-llama", num_layers=4)
    assert model_layout_problems(spec, tp=2, pp=2, vpp=2, sequence_parallel=True) == []
    check_model_layout(spec, tp=2, pp=2, vpp=2)


def test_every_problem_names_the_knob_the_key_and_both_values():
    spec = get_preset("smollm2-135m")  # 9 heads, 3 query groups, ffn 1536, 30 layers
    assert possible_tp(spec) == [1, 3]
    assert model_layout_problems(spec, tp=2, pp=4, vpp=2, sequence_parallel=False,
                                 role="teacher") == [
        "parallel.tensor: 2 does not divide teacher.num_attention_heads: 9 (possible TP: 1, 3)",
        "parallel.tensor: 2 does not divide teacher.num_query_groups: 3 (possible TP: 1, 3)",
        "parallel.pipeline * virtual_pipeline: 8 does not divide teacher.num_layers: 30"]
    with pytest.raises(ValueError, match=r"^parallel.pipeline: 4 does not divide "
                                         r"student.num_layers: 30$"):
        check_model_layout(spec, tp=3, pp=4, role="student")
    with pytest.raises(ValueError, match=r"parallel.tensor: 3 does not divide "
                                         r"model.ffn_hidden_size: 128"):
        check_model_layout(get_preset("tiny-llama", num_attention_heads=3, num_query_groups=3,
                                      hidden_size=48), tp=3)
    with pytest.raises(ValueError, match=r"--sequence-parallel needs --tp > 1"):
        check_model_layout(spec, tp=1, sequence_parallel=True, names=CLI_NAMES)
    assert model_layout_problems(spec, tp=1, pp=4, role="", names=CLI_NAMES) == [
        "--pp: 4 does not divide num_layers: 30"]


def test_data_parallel_problem():
    assert data_parallel_problem("rollout.prompts_per_step", 8, 4) is None
    assert data_parallel_problem("train.sft_batch_size", 6, 4, " (why)") == (
        "train.sft_batch_size = 6 is not divisible by the data-parallel size 4 (why)")
