"""Rewards: answer extraction, math equivalence, reasoning-gym scoring without partial credit,
the format reward, the registry, and safety (model text is never run; a time limit holds).

A failure here usually means a wrong answer is being rewarded (containment, hedging), a right
one is not (number formats), or model text reached an evaluator.
"""

import signal
import threading
import time

import pytest

from rlad_megatron.data.math_answers import (extract_answer, math_equal, parse_number,
                                             time_limit)
from rlad_megatron.data.rewards import (ANSWER_GUARDS, REWARDS, format_reward, get_reward,
                                        math_reward, parse_reward_spec, reasoning_gym_reward)
from rlad_megatron.data.tasks import PromptItem, reasoning_gym_splits

TASKS = ["knights_knaves", "countdown", "basic_arithmetic", "gsm_symbolic"]


def _item(answer: str, task: str = "gsm8k") -> PromptItem:
    return PromptItem(id="t/1", question="q", answer=answer, task=task)


def _tagged(answer: str) -> str:
    return f"Let me think. 1 + 1 = 2.\n<answer>{answer}</answer>"


@pytest.fixture(scope="module")
def rg_items():
    return {t: reasoning_gym_splits(t, train_size=4, heldout_size=2, seed=5) for t in TASKS}


def test_extract_answer_last_tag_then_last_box():
    assert extract_answer("<answer>7</answer> no, <answer> 42 </answer>") == "42"
    assert extract_answer("so \\boxed{1} or \\boxed{\\frac{1}{2}}.") == "\\frac{1}{2}"
    assert extract_answer("\\boxed{9} then <answer>3</answer>") == "3"
    assert extract_answer("<answer>3") is None and extract_answer("\\boxed{3") is None
    assert extract_answer("nothing") is None


@pytest.mark.parametrize("pred,gold", [
    ("42", "42"), ("42.0", "42"), ("0.5", "1/2"), ("\\frac{1}{2}", "0.5"), ("1/2", "\\dfrac12"),
    ("\\boxed{42}", "42"), ("$42$", "42"), ("1,000", "1000"), ("-3", "-3.00"), ("50\\%", "50"),
    ("\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}"), ("2^{10}", "1024"), ("x = 5", "5"),
])
def test_math_equal_accepts(pred, gold):
    assert math_equal(pred, gold)
    assert math_reward(_tagged(pred), _item(gold)) == 1.0


@pytest.mark.parametrize("pred,gold", [
    ("142", "42"), ("42142", "42"), ("-42", "42"), ("4.2", "42"), ("0.333", "1/3"),
    ("1/0", "1"), ("42 or 142", "42"), ("\\frac{1}{3}", "0.5"), ("", "1"), ("x^2", "x^3"),
])
def test_math_equal_rejects(pred, gold):
    assert not math_equal(pred, gold)
    assert math_reward(_tagged(pred), _item(gold)) == 0.0


def test_numbers_parse_exactly_without_sympy():
    assert parse_number("-1,234.50") * 2 == -2469
    assert parse_number("\\boxed{\\frac{3}{4}}") * 4 == 3
    assert parse_number("1,23") is None and parse_number("2+2") is None
    assert math_reward("no answer here", _item("42")) == 0.0


@pytest.mark.parametrize("payload", [
    "__import__('os').system('touch {p}')",
    "exec(\"open('{p}', 'w')\")",
    "(lambda: __import__('os').system('touch {p}'))()",
])
def test_malicious_answers_score_zero_and_never_run(tmp_path, payload, rg_items):
    marker = tmp_path / "ran"
    text = _tagged(payload.format(p=marker))
    assert math_reward(text, _item("0")) == 0.0
    assert reasoning_gym_reward(text, rg_items["countdown"].train[0]) == 0.0
    assert get_reward("math+format")(text, _item("0")) == 1.0  # format only
    assert not marker.exists()


def test_pathological_expression_times_out_to_zero():
    start = time.monotonic()
    assert math_reward(_tagged("\\boxed{9^{9^{9^{9}}}}"), _item("42"), timeout_s=0.3) == 0.0
    assert math_reward(_tagged("(10^{1000000})!"), _item("42"), timeout_s=0.3) == 0.0
    assert time.monotonic() - start < 5.0


def test_time_limit_restores_an_outer_timer_and_needs_the_main_thread():
    outer = signal.setitimer(signal.ITIMER_REAL, 0)  # e.g. pytest-timeout's alarm
    handler = signal.signal(signal.SIGALRM, signal.SIG_IGN)
    try:
        signal.setitimer(signal.ITIMER_REAL, 100.0)
        with time_limit(0.5):
            pass
        remaining, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 90.0 < remaining <= 100.0
        assert signal.getsignal(signal.SIGALRM) == signal.SIG_IGN
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, handler)
        if outer[0] > 0:
            signal.setitimer(signal.ITIMER_REAL, *outer)
    errors = []
    worker = threading.Thread(target=lambda: errors.append(_call_in_thread()))
    worker.start()
    worker.join()
    assert errors == ["main thread"]


def _call_in_thread() -> str:
    try:
        math_equal("\\sqrt{4}", "2")
    except RuntimeError as e:
        return "main thread" if "main thread" in str(e) else str(e)
    return "no error"


@pytest.mark.parametrize("task", TASKS)
def test_reasoning_gym_gold_scores_one(task, rg_items):
    split = rg_items[task]
    for item in split.train + split.heldout:
        assert reasoning_gym_reward(_tagged(item.answer), item) == 1.0, item
        assert reasoning_gym_reward(f"\\boxed{{{item.answer}}}", item) == 1.0
        assert reasoning_gym_reward("I do not know.", item) == 0.0


def _wrong_answers(task: str, item: PromptItem) -> list[str]:
    gold = item.answer
    if task == "knights_knaves":
        names, terms = item.metadata["names"], item.metadata["knight_knave_terms"]
        role = [terms["knight"] if knight else terms["knave"] for knight in
                item.metadata["solution"]]
        flip = {terms["knight"]: terms["knave"], terms["knave"]: terms["knight"]}
        return [f"{names[0]} is a {role[0]}, and {names[1]} is a {flip[role[1]]}",  # 0.3+ there
                f"{gold} or maybe not",  # hedging: the scorer ignores unknown words
                f"{gold}, {names[0]} is a {flip[role[0]]}"]  # contradicts itself
    if task == "countdown":
        return ["1 + 2", f"{gold} + 0 + 0 + 1", "42"]
    return [f"1{gold}", f"{gold} or 142", f"{gold}.5", "142"]


@pytest.mark.parametrize("task", TASKS)
def test_reasoning_gym_gives_no_partial_or_containment_credit(task, rg_items):
    item = rg_items[task].train[0]
    for wrong in _wrong_answers(task, item):
        assert reasoning_gym_reward(_tagged(wrong), item) == 0.0, wrong


def test_reasoning_gym_refuses_unaudited_tasks():
    item = PromptItem(id="x", question="q", answer="[1, 2]", task="spiral_matrix",
                      metadata={"source_dataset": "spiral_matrix"})
    with pytest.raises(ValueError, match="'spiral_matrix'.*audited tasks: .*countdown"):
        reasoning_gym_reward(_tagged("[1, 2]"), item)
    assert set(TASKS) <= set(ANSWER_GUARDS)


@pytest.mark.parametrize("completion,expected", [
    ("think <answer>42</answer>", 1.0), ("<answer> x </answer>\n ", 1.0),
    ("<answer></answer>", 0.0), ("<answer>1</answer> then more", 0.0),
    ("<answer>1</answer><answer>2</answer>", 0.0), ("</answer>1<answer>", 0.0),
    ("\\boxed{42}", 0.0), ("<answer>42", 0.0),
])
def test_format_reward(completion, expected):
    assert format_reward(completion, _item("42")) == expected


def test_registry_and_weighted_specs():
    assert set(REWARDS) == {"reasoning_gym", "math", "format"}
    assert get_reward("math") is math_reward
    assert parse_reward_spec("0.9*math + 0.1*format") == {"math": 0.9, "format": 0.1}
    combined = get_reward("math+0.5*format")
    assert combined(_tagged("42"), _item("42")) == 1.5
    assert combined(_tagged("41"), _item("42")) == 0.5
    assert combined("\\boxed{42}", _item("42")) == 1.0
    with pytest.raises(ValueError, match="unknown reward 'maths'.*known: \\['format', 'math'"):
        get_reward("maths")
    with pytest.raises(ValueError, match="cannot parse term"):
        get_reward("math*2")
