"""Prompt datasets: PromptItem records from reasoning-gym tasks or question/answer files, with
train and held-out splits that cannot share a question.

reasoning-gym (`reasoning_gym_splits(task, train_size=, heldout_size=, seed=)`):
  * reasoning-gym seeds entry idx of a dataset with `seed + idx`, so datasets built from nearby
    seeds overlap. Each (seed, split) therefore gets its own block of generator seeds:
        generator_seed(seed, split) = seed * 2**32 + (0 train, 2**30 validation, 2**31 heldout)
    so entries come from disjoint RNG streams for any seed and any size below 2**24; a difficulty
    level L adds L * 2**24 (levels below 64), so levels do not share a stream either.
  * Different RNG streams can still produce the same puzzle (small task spaces), so items are
    also de-duplicated by `difficulty.structure_key` (the normalised question text; for
    knights_knaves the puzzle with its names abstracted): the held-out split is drawn first, then
    the validation split, then train, each skipping every key already taken; each split keeps
    drawing until it has its size (ValueError if the task space is too small).
  * Three splits: train (RL and SFT prompts), validation (where settings are chosen) and heldout
    (what the reported tables measure). With difficulty `levels` every split holds
    size/len(levels) items of each level, interleaved level by level (so any prefix is
    balanced), each item's level in metadata["level"].
  * basic_arithmetic and chain_sum labels are re-checked with an exact rational evaluator of
    metadata["expression"]; a wrong label is dropped and counted (0.1.25 floors '/' results, and
    allow_parentheses=False evaluates left to right, so that mode is refused outright).

Files (`read_prompt_file`, `file_splits`): JSONL (one JSON object per line; blank lines skipped)
or Parquet, with configurable question and answer fields. The gold answer is taken from the
answer field by `answer_format`: "gsm8k" (text after the last '####', commas removed), "boxed"
(content of the last \\boxed{...}, MATH style), "plain" (the field itself), or "auto" (gsm8k if
'####' occurs, else boxed if '\\boxed' occurs, else plain). The raw field is kept in
metadata["raw_answer"]. A bad row (invalid JSON or UTF-8, not an object, missing field, wrong
type, no extractable answer) raises ValueError naming 'file:line' (Parquet: 'file:row N'), or,
with on_bad_row="skip", is skipped and counted. The split is by a hash of (seed, normalised
question): deterministic, independent of row order, and a repeated question always lands in the
same split (repeats after the first are dropped and counted).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence

from rlad_megatron.data.miniature.levels import (check_level_sizes, level_config, question_key,
                                                 structure_key)
from rlad_megatron.data.math_answers import last_boxed

SPLITS = ("train", "validation", "heldout")
EVAL_SPLITS = ("heldout", "validation")
"""Splits an evaluation may read (heldout: the reported one; validation: for choosing settings)."""
ON_BAD_ROW = ("error", "skip")
"""What a malformed row or an over-long prompt does: stop naming it, or skip and count it."""
_SPLIT_OFFSET = {"train": 0, "validation": 2**30, "heldout": 2**31}
_SEED_STRIDE = 2**32
_LEVEL_STRIDE = 2**24


@dataclass(frozen=True)
class PromptItem:
    """One prompt with its gold answer; `metadata` carries what the task's scorer needs."""

    id: str
    question: str
    answer: str
    task: str
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class PromptSplits:
    """Train, held-out (reported) and validation (tuning) items, plus what was dropped."""

    train: list[PromptItem]
    heldout: list[PromptItem]
    validation: list[PromptItem] = field(default_factory=list)
    duplicates: int = 0
    """items dropped because their question was already in a split"""
    bad_rows: int = 0
    """malformed file rows skipped (on_bad_row="skip")"""
    bad_labels: int = 0
    """generated items whose gold answer failed the exact re-check"""
    too_long: int = 0
    """prompts dropped because they do not fit the context (train/setup.py, on_bad_row="skip")"""


# ----------------------------------------------------------------------------- reasoning-gym


def generator_seed(seed: int, split: str) -> int:
    """reasoning-gym seed of `split` for a run seed; blocks never overlap (module docstring)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not 0 <= seed < 2**31:
        raise ValueError(f"seed must be in [0, 2**31), got {seed}")
    return seed * _SEED_STRIDE + _SPLIT_OFFSET[split]


def reasoning_gym_items(task: str, size: int, seed: int = 0, *, split: str = "train",
                        config: Optional[Mapping[str, Any]] = None) -> list[PromptItem]:
    """`size` distinct items of a reasoning-gym task (no cross-split check; see the splits)."""
    return _draw(task, size, seed, split, dict(config or {}), set(), PromptSplits([], []))


def reasoning_gym_splits(task: str, *, train_size: int, heldout_size: int, seed: int = 0,
                         heldout_seed: Optional[int] = None, validation_size: int = 0,
                         config: Optional[Mapping[str, Any]] = None,
                         levels: Sequence[int] = ()) -> PromptSplits:
    """Disjoint heldout / validation / train items; heldout_seed (default: seed) fixes the
    held-out and validation sets. With `levels`, each size is split evenly over the levels."""
    cfg = dict(config or {})
    out = PromptSplits([], [])
    taken: set[str] = set()
    hseed = seed if heldout_seed is None else heldout_seed
    level_cfgs = [(None, cfg)] if not levels else [
        (lv, level_config(task, lv, cfg)) for lv in levels]
    n = len(level_cfgs)
    check_level_sizes({"heldout_size": heldout_size, "validation_size": validation_size,
                       "train_size": train_size}, levels)
    for split, size, split_seed in (("heldout", heldout_size, hseed),
                                    ("validation", validation_size, hseed),
                                    ("train", train_size, seed)):
        per_level = [_draw(task, size // n, split_seed, split, c, taken, out, level=lv)
                     for lv, c in level_cfgs]
        setattr(out, split, [item for row in zip(*per_level) for item in row])
    return out


def task_names() -> list[str]:
    """The reasoning-gym tasks of the installed version (data.task's values), sorted."""
    from reasoning_gym.factory import DATASETS

    return sorted(DATASETS)


def check_task_config(task: str, config: Mapping[str, Any], key: str = "data.task_config") -> None:
    """Raise ValueError naming `key` when reasoning-gym would refuse `config` for `task` (its own
    config class checks it; no dataset is generated)."""
    from reasoning_gym.factory import DATASETS

    if task not in DATASETS:
        raise ValueError(f"data.task: {task!r} is not a reasoning-gym task")
    config_cls = DATASETS[task][1]
    try:
        cfg = config_cls(**dict(config))
        if hasattr(cfg, "validate"):
            cfg.validate()
    except (TypeError, ValueError, AssertionError) as e:
        raise ValueError(f"{key} {dict(config)} for reasoning-gym task {task!r}: {e}") from None


def _draw(task: str, size: int, seed: int, split: str, config: dict, taken: set[str],
          stats: PromptSplits, level: Optional[int] = None) -> list[PromptItem]:
    import reasoning_gym

    if size == 0:
        return []
    if task == "basic_arithmetic" and config.get("allow_parentheses", True) is False:
        raise ValueError("reasoning-gym basic_arithmetic with allow_parentheses=False has wrong "
                         "labels (it evaluates left to right); use chain_sum or parentheses")
    max_draws = 4 * size + 100
    try:
        dataset = reasoning_gym.create_dataset(
            task, size=max_draws, seed=generator_seed(seed, split) + (level or 0) * _LEVEL_STRIDE,
            **config)
    except (ValueError, TypeError, AssertionError) as e:
        raise ValueError(f"reasoning-gym task {task!r} with config {config}: {e}") from e
    items: list[PromptItem] = []
    tag = "" if level is None else f"L{level}/"
    for idx in range(max_draws):
        if len(items) == size:
            break
        entry = dataset[idx]
        if task in _LABEL_CHECKS and not _LABEL_CHECKS[task](entry):
            stats.bad_labels += 1
            continue
        key = structure_key(task, entry["question"], entry["metadata"])
        if key in taken:
            stats.duplicates += 1
            continue
        taken.add(key)
        metadata = dict(entry["metadata"])
        if level is not None:
            metadata["level"] = level
        items.append(PromptItem(id=f"{task}/{split}/{tag}s{seed}/{idx}",
                                question=entry["question"], answer=str(entry["answer"]),
                                task=task, metadata=metadata))
    if len(items) < size:
        raise ValueError(f"reasoning-gym task {task!r} with config {config} gave only "
                         f"{len(items)} new distinct puzzles in {max_draws} draws for the "
                         f"{split} split; asked for {size} (a smaller data.*_size, or more "
                         f"levels, fits this task's space)")
    return items


_ARITH_TOKEN = re.compile(r"\s*(\d+|[-+*/()])")


def exact_arithmetic(expression: str) -> Optional[Fraction]:
    """Exact value of an integer expression with + - * / ( ) and unary minus; None if invalid.

    A recursive-descent parser over a token list: the text is never evaluated as Python.
    """
    tokens, pos = [], 0
    while pos < len(expression.rstrip()):
        m = _ARITH_TOKEN.match(expression, pos)
        if not m:
            return None
        tokens.append(m.group(1))
        pos = m.end()
    try:
        value, rest = _sum(tokens)
    except (IndexError, ZeroDivisionError, ValueError):
        return None
    return value if not rest else None


def _sum(t: list[str]) -> tuple[Fraction, list[str]]:
    value, t = _product(t)
    while t and t[0] in "+-":
        op, (rhs, t) = t[0], _product(t[1:])
        value = value + rhs if op == "+" else value - rhs
    return value, t


def _product(t: list[str]) -> tuple[Fraction, list[str]]:
    value, t = _unary(t)
    while t and t[0] in "*/":
        op, (rhs, t) = t[0], _unary(t[1:])
        value = value * rhs if op == "*" else value / rhs
    return value, t


def _unary(t: list[str]) -> tuple[Fraction, list[str]]:
    if t[0] in "+-":
        value, rest = _unary(t[1:])
        return (-value if t[0] == "-" else value), rest
    if t[0] == "(":
        value, rest = _sum(t[1:])
        if rest[0] != ")":
            raise ValueError("unbalanced parentheses")
        return value, rest[1:]
    return Fraction(int(t[0])), t[1:]


def _arith_label_ok(entry: Mapping[str, Any]) -> bool:
    value = exact_arithmetic(str(entry["metadata"].get("expression", "")))
    try:
        return value is not None and value == Fraction(str(entry["answer"]))
    except ValueError:
        return False


_LABEL_CHECKS = {"basic_arithmetic": _arith_label_ok, "chain_sum": _arith_label_ok}


# ----------------------------------------------------------------------------- files

ANSWER_FORMATS = ("auto", "gsm8k", "boxed", "plain")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}\b)")


def gold_answer(raw: str, answer_format: str = "auto") -> Optional[str]:
    """The gold answer inside an answer field (module docstring), or None if there is none."""
    if answer_format == "auto":
        answer_format = "gsm8k" if "####" in raw else "boxed" if "\\boxed" in raw else "plain"
    if answer_format == "gsm8k":
        answer = _THOUSANDS.sub("", raw.rsplit("####", 1)[1]).strip() if "####" in raw else None
    elif answer_format == "boxed":
        answer = last_boxed(raw)
    elif answer_format == "plain":
        answer = raw.strip()
    else:
        raise ValueError(f"answer_format must be one of {ANSWER_FORMATS}, got {answer_format!r}")
    return answer or None


def read_prompt_file(path: str | Path, *, question_field: str = "question",
                     answer_field: str = "answer", answer_format: str = "auto",
                     task: Optional[str] = None,
                     on_bad_row: str = "error") -> tuple[list[PromptItem], int]:
    """(items, number of skipped bad rows) of a .jsonl / .parquet file; see the module docstring."""
    p = Path(path)
    if on_bad_row not in ("error", "skip"):
        raise ValueError(f"on_bad_row must be 'error' or 'skip', got {on_bad_row!r}")
    if answer_format not in ANSWER_FORMATS:
        raise ValueError(f"answer_format must be one of {ANSWER_FORMATS}, got {answer_format!r}")
    if not p.is_file():
        raise FileNotFoundError(f"prompt file does not exist: {p}")
    task = task or p.stem
    items, bad = [], 0
    for where, row in _rows(p):
        try:
            items.append(_item(row, where, question_field, answer_field, answer_format, task))
        except _BadRow as e:
            if on_bad_row == "error":
                raise ValueError(f"{p}:{where}: {e}") from None
            bad += 1
    return items, bad


def file_splits(path: str | Path, *, heldout_fraction: float, seed: int = 0,
                **read_kwargs: Any) -> PromptSplits:
    """Deterministic split of a file by hash of (seed, normalised question); repeats dropped."""
    if not 0.0 <= heldout_fraction <= 1.0:
        raise ValueError(f"heldout_fraction must be in [0, 1], got {heldout_fraction}")
    items, bad = read_prompt_file(path, **read_kwargs)
    out = PromptSplits([], [], bad_rows=bad)
    seen: set[str] = set()
    for item in items:
        key = question_key(item.question)
        if key in seen:
            out.duplicates += 1
            continue
        seen.add(key)
        digest = hashlib.sha256(f"{seed}\0{key}".encode()).digest()
        in_heldout = int.from_bytes(digest[:8], "big") / 2**64 < heldout_fraction
        (out.heldout if in_heldout else out.train).append(item)
    return out


class _BadRow(Exception):
    pass


def _rows(p: Path) -> Iterator[tuple[str, Any]]:
    """(location, row) pairs; location is the 1-based line ('7') or Parquet row ('row 7')."""
    if p.suffix == ".parquet":
        import pyarrow.parquet

        for n, row in enumerate(pyarrow.parquet.read_table(p).to_pylist(), start=1):
            yield f"row {n}", row
        return
    if p.suffix not in (".jsonl", ".json"):
        raise ValueError(f"{p}: unknown prompt file kind (expected .jsonl or .parquet)")
    with open(p, "rb") as f:
        for n, raw in enumerate(f, start=1):
            if raw.strip():
                yield str(n), raw


def _item(row: Any, where: str, q_field: str, a_field: str, answer_format: str,
          task: str) -> PromptItem:
    if isinstance(row, bytes):
        try:
            row = json.loads(row.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise _BadRow(f"invalid JSON ({e})") from None
    if not isinstance(row, dict):
        raise _BadRow(f"expected a JSON object, got {type(row).__name__}")
    for name in (q_field, a_field):
        if name not in row:
            raise _BadRow(f"missing field {name!r} (fields: {sorted(row)})")
    question, raw = row[q_field], row[a_field]
    if not isinstance(question, str) or not question.strip():
        raise _BadRow(f"field {q_field!r} must be a non-empty string, got {question!r:.80}")
    if isinstance(raw, bool) or not isinstance(raw, (str, int, float)):
        raise _BadRow(f"field {a_field!r} must be a string or number, got {type(raw).__name__}")
    answer = gold_answer(str(raw), answer_format)
    if answer is None:
        raise _BadRow(f"no {answer_format} answer in field {a_field!r}: {str(raw)!r:.80}")
    return PromptItem(id=f"{task}/{where.replace('row ', '')}", question=question, answer=answer,
                      task=task, metadata={"raw_answer": str(raw)})
