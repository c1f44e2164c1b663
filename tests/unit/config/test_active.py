"""Every option takes effect or is refused (config/active.py): over the whole schema, each field a
rule covers, set away from its default in a run where the rule is off, is refused naming the key
and the setting that would make it take effect; where the rule is on, it is accepted."""

import dataclasses
import re

import pytest

from rlad_megatron.config.active import (RULES, check_active, inactive_fields, reset_inactive,
                                         rules_of)
from rlad_megatron.config.run import RunConfig, load_config
from rlad_megatron.config.schema import get, walk
from rlad_megatron.config.validate import validate_run_config

BASES = ([], ["algorithm=grpo"], ["algorithm=sft"], ["optimizer.name=sgd"],
         ["data.format=compact"], ["rollout.engine=static"],
         ["rollout.teacher_samples=2", "imitation.gate_aligned=false",
          "imitation.gate_advantage=false", "imitation.gate_explore=false"])
"""Runs in which to look for a field that takes no effect (the defaults use rlad, a resident
teacher, the continuous rollout engine and no teacher trajectories)."""


def _other(info):
    """A value of the field's type that differs from its default."""
    d = info.default
    if info.choices:
        return next(c for c in info.choices if c != d)
    if isinstance(d, bool):
        return not d
    if isinstance(d, int):
        return d + 1
    if isinstance(d, float):
        return d / 2 + 0.25 if d != 0.5 else 0.375
    if d is None and "float" in info.type:
        return 2.0
    if d is None and "str" in info.type:
        return "x"
    if d is None and "int" in info.type:
        return 2
    if isinstance(d, str):
        return d + "_x"
    raise AssertionError(f"{info.key}: no other value for type {info.type}")


def _set(cfg, key, value):
    *parents, leaf = key.split(".")
    node = cfg
    for part in parents:
        node = getattr(node, part)
    setattr(node, leaf, value)


def _config(base):
    return load_config(None, ["student.preset=tiny-llama", "student.random_init=true",
                              "teacher.preset=tiny-llama", "teacher.random_init=true", *base])


COVERED = [info for info in walk() if not info.section and rules_of(info.key)]


def test_every_rule_covers_fields_and_the_loss_selection_imitation_sections_are_covered():
    for rule in RULES:
        assert any(info.key.startswith(rule.prefix) for info in COVERED), rule.prefix
    for info in walk():
        if not info.section and info.key.split(".")[0] in ("loss", "selection", "imitation",
                                                             "advantage"):
            assert rules_of(info.key), f"{info.key} has no rule saying when it takes effect"


def test_every_rule_is_the_one_that_switches_a_field_off_in_some_base_run():
    """Each rule, not only an outer one (imitation.* without teacher trajectories hides the gates'
    own rules), is what the parametrized test below sees refusing a field."""
    seen = {rule.prefix for base in BASES for _, rule in inactive_fields(_config(base))}
    assert seen == {rule.prefix for rule in RULES}, {r.prefix for r in RULES} - seen


@pytest.mark.parametrize("info", COVERED, ids=lambda i: i.key)
def test_an_option_that_would_be_ignored_is_refused_naming_what_makes_it_count(info):
    refused = 0
    for base in BASES:
        cfg = _config(base)
        off = dict((i.key, r) for i, r in inactive_fields(cfg)).get(info.key)
        if off is None:
            continue
        _set(cfg, info.key, _other(info))
        with pytest.raises(ValueError, match=rf"{info.key}: .* would be ignored: it takes effect "
                                             rf"only with {re.escape(off.needs)}"):
            validate_run_config(cfg, check_files=False)
        refused += 1
    assert refused, f"{info.key}: no run among {BASES} where it takes no effect"


def test_the_issues_cases_are_refused_and_the_active_ones_pass():
    for over, needs in ((["algorithm=grpo", "loss.trrd.kl_beta=0.5"], "algorithm=rlad"),
                        (["loss.grpo.kl_beta=0.5"], "algorithm=grpo"),
                        (["imitation.weight=5"], r"rollout.teacher_samples > 0 \(here "
                                                 r"rollout.teacher_samples=0\)"),
                        (["imitation.distill_loss=ratio"], "rollout.teacher_samples > 0"),
                        (["rollout.teacher_samples=2", "imitation.gate_aligned=false",
                          "imitation.tau_align=0.15"], r"imitation.gate_aligned=true \(here "
                                                       r"imitation.gate_aligned=False\)"),
                        (["teacher.stream_window=1"], r"teacher.offload=stream \(here "
                                                      r"teacher.offload=none\)")):
        with pytest.raises(ValueError, match=needs):
            check_active(_config(over))
    for over in (["loss.trrd.kl_beta=0.5"], ["algorithm=grpo", "loss.grpo.kl_beta=0.5"],
                 ["rollout.teacher_samples=2", "imitation.weight=5",
                  "imitation.distill_loss=ratio", "imitation.importance_cap=.inf"],
                 ["selection.policy=both", "selection.tau_adv=0.2", "selection.tau_align=-1"],
                 ["rollout.teacher_samples=2", "imitation.tau_align=0.15", "imitation.tau_adv=0",
                  "imitation.tau_success=1", "imitation.success_reward=0.5"],
                 ["teacher.offload=stream", "teacher.stream_window=1",
                  "teacher.stream_activations=host"]):
        check_active(_config(over))


def test_reset_inactive_keeps_what_is_used_and_what_the_caller_set():
    cfg = _config(["algorithm=grpo", "loss.trrd.alpha=0.3", "loss.kdrl.beta_init=0.05",
                   "loss.grpo.eps_high=0.3"])
    out = reset_inactive(cfg, keep={"loss.kdrl.beta_init"})
    assert out.loss.trrd.alpha == 0.5 and out.loss.grpo.eps_high == 0.3
    assert out.loss.kdrl.beta_init == 0.05 and cfg.loss.trrd.alpha == 0.3  # a copy
    check_active(reset_inactive(cfg))
    assert dataclasses.asdict(reset_inactive(RunConfig())) == dataclasses.asdict(RunConfig())
    assert get(out, "loss.kdrl.beta_min") == 1e-3
