"""Prompt formats: the compact chain_sum format's gold solutions and its step check, which decides
whether a completion reaches the reward at all (a lucky answer through wrong steps scores 0)."""

import pytest

from rlad_megatron.data.formats import get_format
from rlad_megatron.data.miniature.compact import chain_sum_solution, chain_sum_steps_ok
from rlad_megatron.data.rewards import get_reward
from rlad_megatron.data.tasks import PromptItem, reasoning_gym_items


def test_chain_sum_solution_is_left_to_right():
    assert chain_sum_solution("3 + 4 - 2") == "3+4=7,7-2=5#5"
    assert chain_sum_solution("0+1-9+0+1") == "0+1=1,1-9=-8,-8+0=-8,-8+1=-7#-7"


@pytest.mark.parametrize("completion,ok", [
    ("3+4=7,7-2=5#5", True),
    ("3+4=8,8-2=6#6", False),        # wrong first step, consistent afterwards
    ("3+4=7,7-2=4#5", False),        # wrong step, answer lucky
    ("3+4=7,7+2=9#9", False),        # wrong operator: not the prompt's term
    ("3+4=7#7", False),              # a term skipped
    ("3+4=7,7-2=5#6", False),        # answer differs from the chain
    ("3+4=7,7-2=5", False),          # no answer
])
def test_steps_must_be_right_and_follow_the_prompt(completion, ok):
    assert chain_sum_steps_ok(completion, "3 + 4 - 2") is ok


def test_compact_reward_scores_gold_1_and_a_lucky_answer_0():
    items = reasoning_gym_items("chain_sum", 20, seed=3, config=dict(min_terms=3, max_terms=4,
                                                                     min_digits=1, max_digits=1))
    fmt, reward = get_format("compact"), get_reward("reasoning_gym")
    for item in items:
        gold = fmt.solution(item)
        assert reward(fmt.to_reward_text(gold, item), item) == 1.0
        answer = gold.rsplit("#", 1)[1]
        lucky = "0+0=0," * (gold.count(",")) + f"#{answer}"
        assert reward(fmt.to_reward_text(lucky, item), item) == 0.0
    assert fmt.prompt(items[0]).endswith("=") and " " not in fmt.prompt(items[0])


def test_compact_format_refuses_other_tasks():
    item = PromptItem(id="x", question="q", answer="1", task="countdown")
    with pytest.raises(ValueError, match="data.format=compact supports chain_sum, "
                                         "knights_knaves, not 'countdown'"):
        get_format("compact").prompt(item)


def test_outcome_only_mode_passes_any_answer_to_the_reward():
    item = reasoning_gym_items("chain_sum", 1, seed=5, config=dict(min_terms=3, max_terms=3,
                                                                    min_digits=1, max_digits=1))[0]
    lucky = "0+0=0,0+0=0#" + item.answer
    outcome = get_format("compact", check_steps=False)
    assert get_reward("reasoning_gym")(outcome.to_reward_text(lucky, item), item) == 1.0


def test_answer_prefill_is_put_back_before_the_reward_and_taken_off_the_gold():
    """data.answer_prefill: a completion that only closes the prefilled tag scores like one that
    wrote the whole answer; the gold continuation (sft) is the gold solution after the prefill."""
    items = reasoning_gym_items("chain_sum", 8, seed=2, config=dict(min_terms=2, max_terms=2,
                                                                     min_digits=1, max_digits=1))
    plain, pre = get_format("chat"), get_format("chat", answer_prefill="<answer>")
    reward = get_reward("reasoning_gym")
    for item in items:
        closing = f"{item.answer}</answer>"
        assert reward(pre.to_reward_text(closing, item), item) == 1.0
        assert reward(plain.to_reward_text(closing, item), item) == 0.0
        assert reward(pre.to_reward_text(f"{int(item.answer) + 1}</answer>", item), item) == 0.0
        assert pre.solution(item) == closing
        assert pre.solution(item) != plain.solution(item)
    assert pre.prefill == "<answer>" and plain.prefill == ""
    with pytest.raises(ValueError, match="data.answer_prefill: 'The answer' does not begin"):
        get_format("chat", answer_prefill="The answer").solution(items[0])
    with pytest.raises(ValueError, match="data.answer_prefill needs data.format=chat"):
        get_format("compact", answer_prefill="<answer>")
