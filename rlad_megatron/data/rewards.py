"""Verifiable rewards: `reward(completion, item) -> float` functions, registered by name.

    REWARDS = {"reasoning_gym": ..., "math": ..., "format": ...}
    reward_fn = get_reward("math+0.1*format")      # weighted sums of registered rewards
    r = reward_fn(completion_text, item)

The answer is taken from the completion by `math_answers.extract_answer`: the last complete
<answer>...</answer>, else the last \\boxed{...}; no answer scores 0 (except in `format`).

reasoning_gym: the task's own `score_answer` on the extracted answer, made binary: 1.0 only when
  the scorer gives full credit (>= 1.0), else 0.0. Decision: reasoning-gym's partial credit is
  dropped for every task, because it rewards wrong answers: the default scorer gives
  len(gold)/len(answer) to any answer that contains the gold ('142' for '42' -> 0.67),
  knights_knaves gives 0.3+ for a partly right assignment, countdown 0.05 and gsm_symbolic 0.01
  for a wrong answer. Use `format` for shaping instead. Two scorers reach full credit on answers
  that merely contain the right one or would run model text, so each task is allowed only with
  an answer guard from ANSWER_GUARDS, checked before its scorer runs (a failing answer scores 0):
    gsm_symbolic  the answer must be one number ('-?\\d+(.\\d+)?'), because its scorer takes the
                  FIRST number anywhere in the text ('42 or 142' would get 1.0);
    countdown     digits, + - * / ( ) and spaces only, no '**' or '//', because its scorer calls
                  sympy.parse_expr, which evaluates the text as Python;
    knights_knaves only the puzzle's names, its two role words, 'is', 'a', 'an', 'and' and
                  punctuation, because its scorer ignores other words ('X is a hero, or not');
    basic_arithmetic, chain_sum: any text (exact string / Decimal comparison);
  every guard also caps the answer at MAX_ANSWER_CHARS. A task without a guard is refused with a
  ValueError (several reasoning-gym scorers call eval() on the answer).
math: `math_answers.math_equal(answer, item.answer)` (exact numbers, else math-verify on parsed
  LaTeX under a time limit; nothing is evaluated as code) -> 1.0 or 0.0.
format: 1.0 when the completion holds exactly one <answer>...</answer> pair, in that order, with
  non-empty content and nothing but whitespace after it; else 0.0.
"""

from __future__ import annotations

import functools
import re
from typing import Callable, Mapping

from rlad_megatron.data.math_answers import (DEFAULT_TIMEOUT_S, MAX_ANSWER_CHARS,
                                             extract_answer, math_equal)
from rlad_megatron.data.tasks import PromptItem

RewardFn = Callable[[str, PromptItem], float]

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_COUNTDOWN_CHARS = re.compile(r"[0-9+\-*/() ]+")


def _any_text(answer: str, item: PromptItem) -> bool:
    return True


def _countdown_expression(answer: str, item: PromptItem) -> bool:
    return (_COUNTDOWN_CHARS.fullmatch(answer) is not None and "**" not in answer
            and "//" not in answer)


def _single_number(answer: str, item: PromptItem) -> bool:
    return _NUMBER.fullmatch(answer) is not None


def _knights_knaves_words(answer: str, item: PromptItem) -> bool:
    names = {str(n).lower() for n in item.metadata.get("names", ())}
    terms = item.metadata.get("knight_knave_terms", {})
    roles = {str(terms.get(k, k)).lower() for k in ("knight", "knave")}
    words = re.findall(r"[^\s.,;:()]+", answer.lower())
    return all(w in names or w in roles or w in _KK_GLUE for w in words)


_KK_GLUE = {"is", "a", "an", "and"}

ANSWER_GUARDS: dict[str, Callable[[str, PromptItem], bool]] = {
    "knights_knaves": _knights_knaves_words,
    "basic_arithmetic": _any_text,
    "chain_sum": _any_text,
    "countdown": _countdown_expression,
    "gsm_symbolic": _single_number,
}
"""Tasks whose reasoning-gym scorer was audited, with the check an answer must pass first."""


@functools.lru_cache(maxsize=None)
def _scorer(task: str) -> Callable:
    import reasoning_gym

    return reasoning_gym.get_score_answer_fn(task)


def reasoning_gym_reward(completion: str, item: PromptItem) -> float:
    """1.0 iff the task's scorer gives the extracted answer full credit (module docstring)."""
    task = str(item.metadata.get("source_dataset", item.task))
    guard = ANSWER_GUARDS.get(task)
    if guard is None:
        raise ValueError(f"reasoning_gym reward: task {task!r} (item {item.id}) has no answer "
                         f"guard; audited tasks: {sorted(ANSWER_GUARDS)}")
    answer = extract_answer(completion)
    if not answer or len(answer) > MAX_ANSWER_CHARS or not guard(answer, item):
        return 0.0
    entry = {"question": item.question, "answer": item.answer, "metadata": dict(item.metadata)}
    return 1.0 if _scorer(task)(answer, entry) >= 1.0 else 0.0


def math_reward(completion: str, item: PromptItem, *,
                timeout_s: float = DEFAULT_TIMEOUT_S) -> float:
    """1.0 iff the extracted answer equals item.answer mathematically (math_answers)."""
    answer = extract_answer(completion)
    if answer is None:
        return 0.0
    return 1.0 if math_equal(answer, item.answer, timeout_s=timeout_s) else 0.0


_OPEN, _CLOSE = "<answer>", "</answer>"


def format_reward(completion: str, item: PromptItem) -> float:
    """1.0 for exactly one non-empty <answer>...</answer> at the end of the completion."""
    if completion.count(_OPEN) != 1 or completion.count(_CLOSE) != 1:
        return 0.0
    start, end = completion.index(_OPEN), completion.index(_CLOSE)
    content = completion[start + len(_OPEN):end]
    ok = start < end and content.strip() and not completion[end + len(_CLOSE):].strip()
    return 1.0 if ok else 0.0


REWARDS: dict[str, RewardFn] = {
    "reasoning_gym": reasoning_gym_reward,
    "math": math_reward,
    "format": format_reward,
}

_TERM = re.compile(r"\s*(?:(\d+(?:\.\d*)?|\.\d+)\s*\*\s*)?([A-Za-z_]\w*)\s*")


def parse_reward_spec(spec: str) -> dict[str, float]:
    """'0.9*math+0.1*format' -> {'math': 0.9, 'format': 0.1}; a bare name has weight 1."""
    weights: dict[str, float] = {}
    for term in spec.split("+"):
        m = _TERM.fullmatch(term)
        if not m:
            raise ValueError(f"reward spec {spec!r}: cannot parse term {term!r}; expected "
                             f"'name' or 'weight*name' joined by '+'")
        name = m.group(2)
        if name not in REWARDS:
            raise ValueError(f"unknown reward {name!r} in {spec!r}; known: {sorted(REWARDS)}")
        weights[name] = weights.get(name, 0.0) + (float(m.group(1)) if m.group(1) else 1.0)
    return weights


def weighted_reward(weights: Mapping[str, float]) -> RewardFn:
    """sum_k weights[k] * REWARDS[k](completion, item)."""
    parts = [(REWARDS[name], float(w)) for name, w in weights.items()]

    def reward(completion: str, item: PromptItem) -> float:
        return sum(w * fn(completion, item) for fn, w in parts)

    reward.__name__ = "+".join(f"{w:g}*{name}" for name, w in weights.items())
    return reward


def get_reward(spec: str) -> RewardFn:
    """The registered reward `spec`, or a weighted sum such as 'math+0.1*format'."""
    weights = parse_reward_spec(spec)
    if len(weights) == 1 and next(iter(weights.values())) == 1.0:
        return REWARDS[next(iter(weights))]
    return weighted_reward(weights)
