"""The planner's Workload is derived from the run config through one table (launch/memory.py
RUN_CONFIG_KEYS): every key it names exists in RunConfig's schema with the same type, every
Workload field is either read through it, derived, or a documented planner-only assumption, and a
run config's values all arrive.

A failure means a RunConfig key was renamed or retyped under the planner, or a Workload field was
added without saying where its value comes from: `rlad plan --config` would then size a run with
a default instead of the config's value.
"""

import dataclasses
import typing

from rlad_megatron.config.run import load_config
from rlad_megatron.config.schema import get, walk
from rlad_megatron.launch.memory import PLANNER_ONLY, RUN_CONFIG_KEYS, Workload

DERIVED = ("old_logprobs_pass",)
"""Workload fields computed from several run-config values (config/on_policy.py)."""


def test_every_mapped_key_is_a_run_config_field_of_the_same_type():
    schema = {info.key: info for info in walk() if not info.section}
    hints = typing.get_type_hints(Workload)
    for name, key in RUN_CONFIG_KEYS.items():
        assert key in schema, f"Workload.{name}: {key} is not a RunConfig key"
        assert schema[key].type == hints[name].__name__, (
            f"Workload.{name} is {hints[name].__name__}, {key} is {schema[key].type}")


def test_every_workload_field_says_where_its_value_comes_from():
    names = [f.name for f in dataclasses.fields(Workload)]
    groups = (tuple(RUN_CONFIG_KEYS), DERIVED, PLANNER_ONLY)
    assert sorted(names) == sorted(n for g in groups for n in g), (
        "each Workload field is in exactly one of RUN_CONFIG_KEYS, DERIVED, PLANNER_ONLY")


def _other_value(info):
    """A value of a schema field other than its default."""
    if info.choices:
        return next(c for c in info.choices if c != info.default)
    if isinstance(info.default, bool):
        return not info.default
    if isinstance(info.default, int):
        return info.default + 3
    raise AssertionError(f"{info.key}: pick a non-default value for a {info.type}")


def test_the_workload_of_a_non_default_run_config_carries_every_mapped_value():
    """Every mapped key set away from its default arrives; explicit fields win; the planner-only
    assumptions keep their defaults."""
    schema = {info.key: info for info in walk() if not info.section}
    values = {key: _other_value(schema[key]) for key in RUN_CONFIG_KEYS.values()}
    cfg = load_config(None, [f"{k}={str(v).lower() if isinstance(v, bool) else v}"
                             for k, v in values.items()])
    w = Workload.from_run_config(cfg)
    for name, key in RUN_CONFIG_KEYS.items():
        assert get(cfg, key) == values[key] != schema[key].default
        assert getattr(w, name) == values[key], f"Workload.{name} != {key}"
    for name in PLANNER_ONLY:
        assert getattr(w, name) == getattr(Workload(), name)
    assert Workload.from_run_config(cfg, group_size=4, prompt_len=77).group_size == 4


def test_explicit_values_of_a_run_config_arrive():
    """The same, spelled out: what a reader of a recipe expects the planner to see."""
    cfg = load_config(None, ["rollout.max_new_tokens=777", "train.micro_batch_size=3",
                             "train.mini_batches=5", "train.max_tokens_per_micro_batch=4096",
                             "rollout.prompts_per_step=24", "rollout.group_size=6",
                             "rollout.micro_batch_size=12", "student.dtype=bf16",
                             "teacher.dtype=fp16", "optimizer.distributed=true",
                             "parallel.sequence_parallel=true", "teacher.offload=stream",
                             "teacher.stream_window=3"])
    w = Workload.from_run_config(cfg, group_size=4)
    assert dataclasses.asdict(w) == {**dataclasses.asdict(Workload()), **dict(
        response_len=777, micro_batch_size=3, mini_batches=5, max_tokens_per_micro_batch=4096,
        prompts_per_step=24, group_size=4, rollout_micro_batch=12, student_dtype="bf16",
        teacher_dtype="fp16", distributed_optimizer=True, sequence_parallel=True,
        teacher_offload="stream", stream_window=3)}
