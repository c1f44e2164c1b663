"""The run's generations (config/generation.py): the views the trainer samples with carry the
run config's values, and their checks, GenerationConfig.validate's (the rollout API's own, kept
once), name the run-config key.

A failure means evaluation or the rollout would sample with settings other than the config's, or
a bad sampling value would be reported under a name the config does not have.
"""

import pytest

from rlad_megatron.config.generation import check_generations, generation_view
from rlad_megatron.config.run import load_config
from rlad_megatron.config.schema import walk
from rlad_megatron.rollout.generate import ENGINES


def test_the_views_carry_the_run_configs_values():
    cfg = load_config(None, ["rollout.max_new_tokens=40", "rollout.temperature=0.7",
                             "rollout.top_p=0.9", "rollout.top_k=5", "rollout.group_size=6",
                             "rollout.micro_batch_size=3", "rollout.engine=static",
                             "rollout.stop_check_every=2", "eval.k=2", "eval.temperature=0.3",
                             "eval.top_p=0.8"])
    r = generation_view(cfg, "rollout", eos_token_id=7, pad_token_id=1)
    assert (r.max_new_tokens, r.temperature, r.top_p, r.top_k, r.samples_per_prompt) == \
        (40, 0.7, 0.9, 5, 6)
    assert (r.eos_token_id, r.pad_token_id, r.progress) == (7, 1, False)
    e = generation_view(cfg, "eval")
    assert (e.max_new_tokens, e.temperature, e.top_p, e.top_k, e.samples_per_prompt) == \
        (40, 0.3, 0.8, 0, 2)  # eval.max_new_tokens=0: the rollout's
    for view in (r, e):  # the rollout's engine and sizes in both
        assert (view.micro_batch_size, view.engine, view.stop_check_every) == (3, "static", 2)
    assert generation_view(load_config(None, ["eval.max_new_tokens=9"]), "eval").max_new_tokens == 9
    assert generation_view(cfg, samples=1).samples_per_prompt == 1  # sft_distill's traces


@pytest.mark.parametrize("override, message", [
    ("rollout.top_p=0", r"rollout.top_p must be in \(0, 1\]"),
    ("eval.top_p=1.5", r"eval.top_p must be in \(0, 1\]"),
    ("rollout.temperature=-1", r"rollout.temperature must be >= 0"),
    ("eval.temperature=-0.5", r"eval.temperature must be >= 0"),
    ("rollout.top_k=-1", r"rollout.top_k must be >= 0"),
    ("rollout.max_new_tokens=0", r"rollout.max_new_tokens must be a positive integer, got 0"),
    ("eval.max_new_tokens=-2", r"eval.max_new_tokens must be a positive integer, got -2"),
    ("rollout.group_size=0", r"rollout.group_size must be >= 1, got 0"),
    ("eval.k=0", r"eval.k must be >= 1, got 0"),
    ("rollout.micro_batch_size=-1", r"rollout.micro_batch_size must be >= 0"),
    ("rollout.max_live_rows=-1", r"rollout.max_live_rows must be >= 0"),
    ("rollout.kv_block_size=0", r"rollout.kv_block_size must be >= 1, got 0"),
    ("rollout.stop_check_every=0", r"rollout.stop_check_every must be >= 1, got 0"),
])
def test_each_sampling_error_names_the_run_config_key(override, message):
    with pytest.raises(ValueError, match=message):
        check_generations(load_config(None, [override]))


def test_the_defaults_pass_and_the_engine_choices_are_the_samplers():
    check_generations(load_config(None, []))
    engine = next(info for info in walk() if info.key == "rollout.engine")
    assert set(engine.choices) == set(ENGINES)
