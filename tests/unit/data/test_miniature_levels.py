"""Difficulty levels, the validation split, knights_knaves puzzles held out by structure, and
the compact K&K format scored by reasoning-gym's own scorer.

A failure means a held-out puzzle (under other names) was trained on, a level column measures
the wrong difficulty, or a correct K&K answer is scored wrong (or a wrong one right).
"""

import pytest

from rlad_megatron.data.miniature.levels import level_config, structure_key
from rlad_megatron.data.formats import get_format
from rlad_megatron.data.miniature.compact import knights_knaves_chain
from rlad_megatron.data.rewards import get_reward
from rlad_megatron.data.tasks import reasoning_gym_splits


def test_level_config_sets_the_knob_and_refuses_clashes():
    assert level_config("chain_sum", 4, {"min_digits": 1}) == {
        "min_digits": 1, "min_terms": 4, "max_terms": 4}
    assert level_config("knights_knaves", 3, {}) == {"n_people": 3}
    with pytest.raises(ValueError, match="controls"):
        level_config("chain_sum", 3, {"min_terms": 2})
    with pytest.raises(ValueError, match="no difficulty knob"):
        level_config("countdown", 3, {})
    with pytest.raises(ValueError, match=">= 2"):
        level_config("knights_knaves", 1, {})


def test_chain_sum_levels_interleaved_and_splits_disjoint():
    s = reasoning_gym_splits("chain_sum", train_size=60, heldout_size=12, validation_size=6,
                             levels=[3, 4, 5], config={"min_digits": 1, "max_digits": 1})
    assert [i.metadata["level"] for i in s.heldout[:6]] == [3, 4, 5, 3, 4, 5]
    for items in (s.train, s.heldout, s.validation):
        for item in items:
            assert len(item.metadata["expression"].split()) == 2 * item.metadata["level"] - 1
    keys = [{i.question for i in split} for split in (s.train, s.validation, s.heldout)]
    assert not (keys[0] & keys[1]) and not (keys[0] & keys[2]) and not (keys[1] & keys[2])
    with pytest.raises(ValueError, match="not divisible"):
        reasoning_gym_splits("chain_sum", train_size=10, heldout_size=3, levels=[3, 4])


def test_knights_knaves_heldout_structures_never_appear_in_training():
    # 2 people: 399 structures under thousands of texts; 300 training draws must avoid every
    # held-out structure even though their names differ
    s = reasoning_gym_splits("knights_knaves", train_size=300, heldout_size=60,
                             validation_size=30, levels=[2, 3], seed=5)
    key = lambda i: structure_key(i.task, i.question, i.metadata)  # noqa: E731
    train = {key(i) for i in s.train}
    assert not train & {key(i) for i in s.heldout}
    assert not train & {key(i) for i in s.validation}
    assert s.duplicates > 0  # the 2-person space is small enough that draws collide
    # the key ignores names: two items of one structure get one key
    a = s.heldout[0]
    renamed = dict(a.metadata, names=["X", "Y", "Z"][:len(a.metadata["names"])])
    assert structure_key(a.task, "other text", renamed) == key(a)


def test_knights_knaves_compact_format_scored_by_reasoning_gym():
    s = reasoning_gym_splits("knights_knaves", train_size=0, heldout_size=6, levels=[2, 3, 4])
    reward = get_reward("reasoning_gym")
    steps, outcome = get_format("compact"), get_format("compact", check_steps=False)
    for item in s.heldout:
        gold = steps.solution(item)
        n = item.metadata["level"]
        assert steps.prompt(item).count(":") == n and gold.count(",") == 2 ** n - 1
        assert gold.count("!") >= 1 and gold.split("#")[0] == knights_knaves_chain(
            item.metadata["statements"])
        assert reward(steps.to_reward_text(gold, item), item) == 1.0
        assert steps.steps_ok(gold, item)
        answer = gold.split("#")[1]
        flipped = ("n" if answer[0] == "k" else "k") + answer[1:]
        assert reward(outcome.to_reward_text("#" + flipped, item), item) == 0.0
        # outcome reward: a right answer after a wrong chain counts; the step check refuses it
        lucky = "kk:XX#" + answer
        assert reward(outcome.to_reward_text(lucky, item), item) == 1.0
        assert reward(steps.to_reward_text(lucky, item), item) == 0.0
        assert not steps.steps_ok(lucky, item)
