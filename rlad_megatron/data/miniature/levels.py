"""Difficulty levels of the reproduction tasks, like the paper's PPL2-PPL8 columns, and the key
that makes two prompts "the same puzzle".

    level_config("chain_sum", 4, {"min_digits": 1, "max_digits": 1})
        -> {"min_digits": 1, "max_digits": 1, "min_terms": 4, "max_terms": 4}
    level_config("knights_knaves", 3, {}) -> {"n_people": 3}

A level is one integer per task (LEVEL_KNOBS): chain_sum's number of terms, knights_knaves'
number of people. Training mixes the levels; evaluation reports each level and their average.

structure_key(task, question, metadata) is what held-out splits are disjoint by:
  * knights_knaves: the puzzle with names and role words abstracted away (its statements as
    person indices and operators). 2-person K&K has only 399 such structures, while its
    question texts number in the tens of thousands (names x role words): a split disjoint by text
    would evaluate on puzzles seen in training under other names.
  * every other task: the normalised question text.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

LEVEL_KNOBS: dict[str, Callable[[int], dict[str, Any]]] = {
    "chain_sum": lambda level: {"min_terms": level, "max_terms": level},
    "knights_knaves": lambda level: {"n_people": level},
}
"""task -> level -> the reasoning-gym options that fix that difficulty."""

LEVEL_NAMES = {"chain_sum": "terms", "knights_knaves": "people"}
"""What a level counts, for table headers ("3 terms", "PPL3")."""

_MIN_LEVEL = {"chain_sum": 2, "knights_knaves": 2}


def level_config(task: str, level: int, base: Mapping[str, Any]) -> dict[str, Any]:
    """The reasoning-gym config of `task` at `level`: `base` with the level's knob set."""
    if task not in LEVEL_KNOBS:
        raise ValueError(f"data.levels: task {task!r} has no difficulty knob; tasks with levels: "
                         f"{', '.join(sorted(LEVEL_KNOBS))}")
    if not isinstance(level, int) or level < _MIN_LEVEL[task]:
        raise ValueError(f"data.levels: {task} level {level!r} must be an integer >= "
                         f"{_MIN_LEVEL[task]} ({LEVEL_NAMES[task]})")
    knob = LEVEL_KNOBS[task](level)
    clash = sorted(set(knob) & set(base))
    if clash:
        raise ValueError(f"data.task_config sets {clash}, which data.levels controls; remove "
                         f"them from data.task_config")
    return {**base, **knob}


def check_level_sizes(sizes: Mapping[str, int], levels: Sequence[int]) -> None:
    """Each split's size must divide evenly over the levels; `sizes` maps data.* keys to sizes."""
    for key, size in sizes.items():
        if levels and size % len(levels):
            raise ValueError(f"data.{key} = {size} is not divisible by the {len(levels)} "
                             f"data.levels {list(levels)} (each level gets the same number)")


def question_key(question: str) -> str:
    """Normalised question text (whitespace collapsed, case folded) used for de-duplication."""
    return " ".join(question.split()).casefold()


def structure_key(task: str, question: str, metadata: Mapping[str, Any]) -> str:
    """The identity of a puzzle for de-duplication and held-out splits (module docstring)."""
    if task == "knights_knaves" and "statements" in metadata:
        return f"kk:{len(metadata['statements'])}:{_plain(metadata['statements'])!r}"
    return question_key(question)


def _plain(value: Any) -> Any:
    """Nested tuples/lists of numpy scalars and strings -> plain Python (a stable repr)."""
    if isinstance(value, (tuple, list)):
        return tuple(_plain(v) for v in value)
    if hasattr(value, "item"):
        return value.item()
    return value
