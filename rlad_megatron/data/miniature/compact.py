"""The compact format of the miniature tasks (`data.format: compact`): short prompts and
procedural solutions for tiny models trained from scratch on CPU, the reproduction's chain_sum
and knights_knaves (data/formats.py documents the format; data/miniature/levels.py their
difficulty levels).

    chain_sum       "3+4-2=" -> "3+4=7,7-2=5#5"
    knights_knaves  "A:(Ak=Bk);B:Ak;C:(Bk=An)?" -> "kkk:TTF,kkn:TTT!,...#kkn"

The part after '#' is the answer; `compact_reward_text` hands it to the task's own scorer in
<answer> tags, only when every step of the chain is right (`compact_steps_ok`) unless
data.check_steps is off.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Optional

from rlad_megatron.data.tasks import PromptItem

_TERM = re.compile(r"[+-]?\d+")


def chain_sum_solution(expression: str) -> str:
    """'3+4-2' -> '3+4=7,7-2=5#5' (left to right, one step per operator)."""
    terms = _TERM.findall(expression.replace(" ", ""))
    if not terms:
        raise ValueError(f"chain_sum: cannot parse expression {expression!r}")
    total, steps = int(terms[0]), []
    for term in terms[1:]:
        value = int(term)
        new = total + value
        steps.append(f"{total}{'+' if value >= 0 else '-'}{abs(value)}={new}")
        total = new
    return (",".join(steps) if steps else str(total)) + f"#{total}"


_STEP = re.compile(r"^(-?\d+)([+-])(\d+)=(-?\d+)$")


def chain_sum_steps_ok(completion: str, expression: str) -> bool:
    """Every 'a+b=c' / 'a-b=c' step is right, chains from the previous result, and consumes the
    expression's terms in order; the answer after '#' is the last result."""
    if "#" not in completion:
        return False
    chain, answer = completion.rsplit("#", 1)
    terms = [int(t) for t in _TERM.findall(expression.replace(" ", ""))]
    steps = chain.split(",") if chain else []
    if len(steps) != len(terms) - 1:
        return False
    total = terms[0]
    for step, term in zip(steps, terms[1:]):
        m = _STEP.match(step)
        if m is None:
            return False
        a, op, b, c = int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))
        if a != total or (b if op == "+" else -b) != term or c != a + (b if op == "+" else -b):
            return False
        total = c
    return answer.strip() == str(total)


_KK_OPS = {"and": "&", "or": "|", "->": ">", "<=>": "="}
_LETTERS = "ABCDEFGHIJ"


def _kk_render(s) -> str:
    op = s[0]
    if op in ("telling-truth", "lying"):
        return _LETTERS[int(s[1])] + ("k" if op == "telling-truth" else "n")
    if op == "not":
        return "~" + _kk_render(s[1])
    return "(" + _kk_render(s[1]) + _KK_OPS[op] + _kk_render(s[2]) + ")"


def _kk_eval(s, roles: tuple[bool, ...]) -> bool:
    op = s[0]
    if op in ("telling-truth", "lying"):
        return roles[int(s[1])] == (op == "telling-truth")
    if op == "not":
        return not _kk_eval(s[1], roles)
    a, b = _kk_eval(s[1], roles), _kk_eval(s[2], roles)
    return {"and": a and b, "or": a or b, "->": (not a) or b, "<=>": a == b}[op]


def _kk_code(roles) -> str:
    return "".join("k" if r else "n" for r in roles)


def knights_knaves_prompt(statements) -> str:
    """Compact puzzle text: 'A:<statement>;B:<statement>?' (module docstring)."""
    return ";".join(f"{_LETTERS[i]}:{_kk_render(s)}" for i, s in enumerate(statements)) + "?"


def knights_knaves_chain(statements) -> str:
    """Every assignment (knight first), its statements' truth values, '!' where consistent."""
    n, parts = len(statements), []
    for code in range(2 ** n):
        roles = tuple(not (code >> (n - 1 - i)) & 1 for i in range(n))
        truth = [_kk_eval(s, roles) for s in statements]
        mark = "!" if tuple(truth) == roles else ""
        parts.append(_kk_code(roles) + ":" + "".join("T" if t else "F" for t in truth) + mark)
    return ",".join(parts)


def knights_knaves_steps_ok(completion: str, item: PromptItem) -> bool:
    if "#" not in completion:
        return False
    chain, answer = completion.rsplit("#", 1)
    return (chain == knights_knaves_chain(item.metadata["statements"])
            and answer.strip() == _kk_code(item.metadata["solution"]))


def knights_knaves_sentence(code: str, item: PromptItem) -> Optional[str]:
    """'kn' -> 'Ann is a knight, and Bob is a knave.' in the puzzle's own names and role words;
    None when the code is not one k/n per person."""
    names = [str(n) for n in item.metadata["names"]]
    terms = item.metadata["knight_knave_terms"]
    if len(code) != len(names) or set(code) - {"k", "n"}:
        return None
    parts = [f"{name} is {terms['a_knight'] if c == 'k' else terms['a_knave']}"
             for name, c in zip(names, code)]
    return ", ".join(parts[:-1]) + ", and " + parts[-1] + "."


@dataclass(frozen=True)
class _CompactTask:
    prompt: Callable[[PromptItem], str]
    solution: Callable[[PromptItem], str]
    steps_ok: Callable[[str, PromptItem], bool]


_COMPACT = {
    "chain_sum": _CompactTask(
        prompt=lambda item: str(item.metadata["expression"]).replace(" ", "") + "=",
        solution=lambda item: chain_sum_solution(str(item.metadata["expression"])),
        steps_ok=lambda c, item: chain_sum_steps_ok(c, str(item.metadata["expression"]))),
    "knights_knaves": _CompactTask(
        prompt=lambda item: knights_knaves_prompt(item.metadata["statements"]),
        solution=lambda item: (knights_knaves_chain(item.metadata["statements"]) + "#"
                               + _kk_code(item.metadata["solution"])),
        steps_ok=knights_knaves_steps_ok),
}
COMPACT_TASKS = tuple(_COMPACT)


def _compact(item: PromptItem) -> _CompactTask:
    if item.task not in _COMPACT:
        raise ValueError(f"data.format=compact supports {', '.join(COMPACT_TASKS)}, "
                         f"not {item.task!r}")
    return _COMPACT[item.task]


def compact_prompt(item: PromptItem) -> str:
    return _compact(item).prompt(item)


def compact_solution(item: PromptItem) -> str:
    return _compact(item).solution(item)


def compact_steps_ok(completion: str, item: PromptItem) -> bool:
    """True when every step of the completion's chain is right and its answer follows."""
    return _compact(item).steps_ok(completion, item)


def compact_reward_text(completion: str, item: PromptItem, check_steps: bool = True) -> str:
    """The text the reward reads: the answer in <answer> tags (a knights_knaves code as
    reasoning-gym's sentence), or the completion itself when a step is wrong."""
    if check_steps and not compact_steps_ok(completion, item):
        return completion
    answer = completion.rsplit("#", 1)[1].strip() if "#" in completion else ""
    if answer and item.task == "knights_knaves":
        answer = knights_knaves_sentence(answer, item) or ""
    return f"<answer>{answer}</answer>" if answer else completion
