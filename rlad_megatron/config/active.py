"""When each option of the run configuration takes effect: an option of a section the run does
not use (loss.trrd.* under algorithm=grpo, imitation.* without teacher trajectories, ...) that
differs from its default is refused by `check_active`, naming the setting that would make it
take effect, instead of being silently ignored. tests/unit/config/test_active.py holds the rule
over the whole schema: every field under a rule's prefix, set away from its default where the
rule is off, is refused.

Recipes share one `rl` section among arms of different algorithms: reproduce/spec.py resets the
options an arm does not use to their defaults (`reset_inactive`) unless the arm sets them itself.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

from rlad_megatron.config.run import RunConfig
from rlad_megatron.config.schema import FieldInfo, get, walk


@dataclass(frozen=True)
class Rule:
    """The fields whose key starts with `prefix` take effect only when `applies(cfg)`; `needs`
    says which setting makes them take effect."""

    prefix: str
    applies: Callable[[RunConfig], bool]
    needs: str


RULES: tuple[Rule, ...] = (
    Rule("advantage.", lambda c: c.is_rl, "algorithm=rlad, grpo or kdrl"),
    Rule("loss.trrd.", lambda c: c.algorithm == "rlad", "algorithm=rlad"),
    Rule("loss.grpo.", lambda c: c.algorithm == "grpo", "algorithm=grpo"),
    Rule("loss.kdrl.", lambda c: c.algorithm == "kdrl", "algorithm=kdrl"),
    Rule("loss.sft.", lambda c: c.algorithm in ("sft", "sft_distill"),
         "algorithm=sft or sft_distill"),
    Rule("loss.trrd.kl_estimator", lambda c: c.loss.trrd.kl_beta > 0, "loss.trrd.kl_beta > 0"),
    Rule("loss.grpo.kl_estimator", lambda c: c.loss.grpo.kl_beta > 0, "loss.grpo.kl_beta > 0"),
    Rule("selection.", lambda c: c.algorithm in ("rlad", "kdrl"), "algorithm=rlad or kdrl"),
    Rule("selection.tau_adv", lambda c: c.selection.policy in ("advantage", "both"),
         "selection.policy=advantage or both"),
    Rule("selection.tau_align", lambda c: c.selection.policy in ("alignment", "both"),
         "selection.policy=alignment or both"),
    Rule("imitation.", lambda c: c.rollout.teacher_samples > 0, "rollout.teacher_samples > 0"),
    Rule("teacher.parallel.", lambda c: c.needs_teacher,
         "algorithm=rlad, kdrl or sft_distill, or rollout.teacher_samples > 0"),
    Rule("imitation.importance_cap", lambda c: c.imitation.distill_loss == "ratio",
         "imitation.distill_loss=ratio"),
    Rule("imitation.weight_steps", lambda c: c.imitation.weight_end is not None,
         "imitation.weight_end set"),
    # align_metric is not here: imitation/alignment_mean reports its metric with the gate off too
    Rule("imitation.tau_align", lambda c: c.imitation.gate_aligned, "imitation.gate_aligned=true"),
    Rule("imitation.tau_adv", lambda c: c.imitation.gate_advantage,
         "imitation.gate_advantage=true"),
    Rule("imitation.tau_success", lambda c: c.imitation.gate_explore,
         "imitation.gate_explore=true"),
    Rule("imitation.success_reward", lambda c: c.imitation.gate_explore,
         "imitation.gate_explore=true"),
    Rule("teacher.stream_", lambda c: c.teacher.offload == "stream", "teacher.offload=stream"),
    Rule("data.check_steps", lambda c: c.data.format == "compact", "data.format=compact"),
    Rule("data.system_prompt", lambda c: c.data.format == "chat", "data.format=chat"),
    Rule("data.answer_prefill", lambda c: c.data.format == "chat", "data.format=chat"),
    Rule("optimizer.adam_", lambda c: c.optimizer.name == "adam", "optimizer.name=adam"),
    Rule("optimizer.sgd_", lambda c: c.optimizer.name == "sgd", "optimizer.name=sgd"),
    Rule("rollout.stop_check_every", lambda c: c.rollout.engine == "static",
         "rollout.engine=static"),
    Rule("rollout.max_live_rows", lambda c: c.rollout.engine == "continuous",
         "rollout.engine=continuous"),
    Rule("rollout.kv_block_size", lambda c: c.rollout.engine == "continuous",
         "rollout.engine=continuous"),
)
for _key in ("question_field", "answer_field", "answer_format", "heldout_fraction"):
    RULES += (Rule(f"data.{_key}", lambda c: c.data.source != "reasoning_gym",
                   "data.source=<a JSONL/Parquet file>"),)


def rules_of(key: str) -> list[Rule]:
    """The rules that cover a dotted key, outermost (shortest prefix) first."""
    return sorted((r for r in RULES if key.startswith(r.prefix)), key=lambda r: len(r.prefix))


def inactive_fields(cfg: RunConfig) -> Iterator[tuple[FieldInfo, Rule]]:
    """Each leaf field that takes no effect in `cfg`, with the first rule that switches it off."""
    for info in walk(type(cfg)):
        if info.section:
            continue
        off = next((r for r in rules_of(info.key) if not r.applies(cfg)), None)
        if off is not None:
            yield info, off


def check_active(cfg: RunConfig) -> None:
    """A ValueError for the first option that takes no effect in `cfg` but differs from its
    default, naming the key, its value and the setting that would make it take effect."""
    for info, rule in inactive_fields(cfg):
        value = get(cfg, info.key)
        if value != info.default:
            raise ValueError(f"{info.key}: {value!r} would be ignored: it takes effect only with "
                             f"{rule.needs} (here {_state(cfg, rule)}); remove it")


def _state(cfg: RunConfig, rule: Rule) -> str:
    """The current value of the setting a rule names, e.g. 'algorithm=grpo'."""
    key = rule.needs.split("=")[0].split(" ")[0]
    try:
        return f"{key}={get(cfg, key)}"
    except AttributeError:
        return "it is off"


def reset_inactive(cfg: RunConfig, keep: Optional[set[str]] = None) -> RunConfig:
    """A copy of `cfg` with every option that takes no effect back at its default, except the
    dotted keys in `keep` (set explicitly by the caller, to be refused by check_active)."""
    out = copy.deepcopy(cfg)
    for info, _ in list(inactive_fields(out)):
        if info.key in (keep or set()):
            continue
        *parents, leaf = info.key.split(".")
        node = out
        for part in parents:
            node = getattr(node, part)
        setattr(node, leaf, copy.deepcopy(info.default))
    return out
