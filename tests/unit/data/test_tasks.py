"""Prompt datasets: reasoning-gym items per seed, train / held-out splits that share no question,
and JSONL / Parquet prompt files (GSM8K '####' and MATH '\\boxed{}' answers, bad rows).

A failure here usually means evaluation prompts leak into training, a run is not reproducible
from its seed, or a malformed file row was silently accepted.
"""

from pathlib import Path

import pyarrow
import pyarrow.parquet
import pytest

from rlad_megatron.data.tasks import (SPLITS, PromptItem, exact_arithmetic, file_splits,
                                      generator_seed, gold_answer, question_key,
                                      read_prompt_file, reasoning_gym_items,
                                      reasoning_gym_splits)

TASKS = ["knights_knaves", "countdown", "basic_arithmetic", "gsm_symbolic"]
MALFORMED = Path(__file__).parents[2] / "assets" / "prompts_malformed.jsonl"


def _questions(items):
    return [question_key(i.question) for i in items]


@pytest.mark.parametrize("task", TASKS)
def test_reasoning_gym_splits_disjoint_and_deterministic(task):
    a = reasoning_gym_splits(task, train_size=12, heldout_size=6, seed=3)
    b = reasoning_gym_splits(task, train_size=12, heldout_size=6, seed=3)
    assert (len(a.train), len(a.heldout)) == (12, 6)
    assert a.train == b.train and a.heldout == b.heldout
    assert not set(_questions(a.train)) & set(_questions(a.heldout))
    assert len(set(_questions(a.train + a.heldout))) == 18
    item = a.train[0]
    assert isinstance(item, PromptItem) and item.task == task and item.answer
    assert item.metadata["source_dataset"] == task
    assert len({i.id for i in a.train + a.heldout}) == 18


def test_other_seed_gives_other_items_and_heldout_ignores_train_size():
    a = reasoning_gym_splits("gsm_symbolic", train_size=20, heldout_size=10, seed=0)
    b = reasoning_gym_splits("gsm_symbolic", train_size=20, heldout_size=10, seed=1)
    assert not set(_questions(a.train)) & set(_questions(b.train))
    bigger = reasoning_gym_splits("gsm_symbolic", train_size=40, heldout_size=10, seed=0)
    assert bigger.heldout == a.heldout and bigger.train[:20] == a.train
    fixed = reasoning_gym_splits("gsm_symbolic", train_size=20, heldout_size=10, seed=1,
                                 heldout_seed=0)
    assert fixed.heldout == a.heldout


def test_generator_seed_blocks_never_overlap():
    # reasoning-gym seeds entry idx with seed + idx: blocks must be disjoint for sizes < 2**24,
    # with difficulty level L adding L * 2**24 (levels < 64) inside its split's block
    starts = sorted(generator_seed(s, split) for s in range(4) for split in SPLITS)
    assert all(b - a >= 2**30 for a, b in zip(starts, starts[1:]))
    assert 63 * 2**24 + 2**24 <= 2**30
    assert reasoning_gym_items("chain_sum", 5, seed=2, split="heldout")[0].id == \
        "chain_sum/heldout/s2/0"
    with pytest.raises(ValueError, match="seed must be in"):
        generator_seed(-1, "train")


def test_small_task_space_is_deduplicated_then_refused():
    cfg = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}
    s = reasoning_gym_splits("chain_sum", train_size=60, heldout_size=60, seed=0, config=cfg)
    assert s.duplicates > 0
    assert len(set(_questions(s.train + s.heldout))) == 120
    fewer = reasoning_gym_splits("chain_sum", train_size=10, heldout_size=60, seed=0, config=cfg)
    assert fewer.heldout == s.heldout  # held-out is drawn first: train size never changes it
    with pytest.raises(ValueError, match="only .* new distinct puzzles"):
        reasoning_gym_splits("chain_sum", train_size=300, heldout_size=100, seed=0, config=cfg)


def test_basic_arithmetic_labels_are_checked_exactly():
    assert exact_arithmetic("-1439 / -( ( 5762 / 2881 ) + 3 )") * 5 == 1439  # reasoning-gym: 287
    assert exact_arithmetic("2 * (3 + 4) - -1") == 15
    for bad in ["1 / 0", "(1", "1 2", "__import__('os')", "2 ** 3"]:
        assert exact_arithmetic(bad) is None, bad
    s = reasoning_gym_splits("basic_arithmetic", train_size=300, heldout_size=50, seed=0)
    assert s.bad_labels > 0
    for item in s.train + s.heldout:
        assert str(exact_arithmetic(item.metadata["expression"])) == item.answer
    with pytest.raises(ValueError, match="allow_parentheses=False has wrong labels"):
        reasoning_gym_items("basic_arithmetic", 4, config={"allow_parentheses": False})


def test_unknown_task_or_config_is_a_value_error():
    with pytest.raises(ValueError, match="'no_such_task'"):
        reasoning_gym_items("no_such_task", 3)
    with pytest.raises(ValueError, match="countdown"):
        reasoning_gym_items("countdown", 3, config={"not_an_option": 1})


def test_gold_answer_formats():
    assert gold_answer("3 + 4 = 7\n#### 1,234") == "1234"
    assert gold_answer("so \\boxed{\\frac{1}{2}} and done") == "\\frac{1}{2}"
    assert gold_answer("a \\boxed{1} then \\boxed{x^{2}}", "boxed") == "x^{2}"
    assert gold_answer(" 42 ") == "42"
    assert gold_answer("no marker", "gsm8k") is None
    with pytest.raises(ValueError, match="answer_format"):
        gold_answer("1", "latex")


def test_jsonl_gsm8k_and_math_fields(tmp_path):
    path = tmp_path / "math.jsonl"
    path.write_text('{"problem": "Half of one?",'
                    ' "solution": "It is $\\\\boxed{\\\\frac{1}{2}}$."}\n'
                    '\n{"problem": "How many?", "solution": "2 + 2 = 4 #### 4", "level": 1}\n')
    items, bad = read_prompt_file(path, question_field="problem", answer_field="solution")
    assert bad == 0
    assert [(i.id, i.question, i.answer, i.task) for i in items] == [
        ("math/1", "Half of one?", "\\frac{1}{2}", "math"), ("math/3", "How many?", "4", "math")]
    assert items[0].metadata["raw_answer"] == "It is $\\boxed{\\frac{1}{2}}$."


def test_malformed_jsonl_errors_with_file_and_line():
    with pytest.raises(ValueError, match=r"prompts_malformed.jsonl:2: invalid JSON"):
        read_prompt_file(MALFORMED)
    items, bad = read_prompt_file(MALFORMED, on_bad_row="skip")
    assert bad == 4 and [i.answer for i in items] == ["7", "1200", "no marker and no box"]
    items, bad = read_prompt_file(MALFORMED, on_bad_row="skip", answer_format="gsm8k")
    assert bad == 5 and [i.id for i in items] == ["prompts_malformed/1", "prompts_malformed/7"]
    with pytest.raises(ValueError, match="on_bad_row"):
        read_prompt_file(MALFORMED, on_bad_row="ignore")


@pytest.mark.parametrize("line,reason", [
    ('{"question": "q", "answer": "#### 1"', "invalid JSON"),
    ('{"question": "q"}', "missing field 'answer'"),
    ('{"question": 17, "answer": "#### 17"}', "field 'question' must be a non-empty string"),
    ('{"question": "q", "answer": true}', "field 'answer' must be a string or number"),
    ('[1, 2]', "expected a JSON object"),
    (b'{"question": "\xff", "answer": "1"}', "invalid JSON"),
])
def test_each_bad_row_kind_names_line(tmp_path, line, reason):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'{"question": "ok", "answer": 3}\n'
                     + (line if isinstance(line, bytes) else line.encode()) + b"\n")
    with pytest.raises(ValueError, match=f"rows.jsonl:2: {reason}"):
        read_prompt_file(path)
    assert read_prompt_file(path, on_bad_row="skip")[1] == 1


def test_parquet_rows(tmp_path):
    path = tmp_path / "gsm.parquet"
    table = pyarrow.table({"question": ["One plus one?", None, "Two times three?"],
                           "answer": ["1 + 1 = 2\n#### 2", "#### 5", "#### 6"]})
    pyarrow.parquet.write_table(table, path)
    with pytest.raises(ValueError, match="gsm.parquet:row 2: field 'question'"):
        read_prompt_file(path)
    items, bad = read_prompt_file(path, on_bad_row="skip", task="gsm8k")
    assert bad == 1 and [(i.id, i.answer) for i in items] == [("gsm8k/1", "2"), ("gsm8k/3", "6")]


def test_missing_or_unknown_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        read_prompt_file(tmp_path / "nope.jsonl")
    (tmp_path / "data.csv").write_text("question,answer\n")
    with pytest.raises(ValueError, match="data.csv: unknown prompt file kind"):
        read_prompt_file(tmp_path / "data.csv")


def test_file_splits_deterministic_disjoint_and_order_free(tmp_path):
    rows = [f'{{"question": "What is {n} plus {n}?", "answer": "#### {2 * n}"}}'
            for n in range(200)]
    rows.append('{"question": "what is 7   plus 7?", "answer": "#### 14"}')  # a repeat
    forward, backward = tmp_path / "f.jsonl", tmp_path / "b.jsonl"
    forward.write_text("\n".join(rows) + "\n")
    backward.write_text("\n".join(reversed(rows)) + "\n")
    a = file_splits(forward, heldout_fraction=0.25, seed=0)
    assert a.duplicates == 1 and len(a.train) + len(a.heldout) == 200
    assert 25 <= len(a.heldout) <= 75
    assert not set(_questions(a.train)) & set(_questions(a.heldout))
    b = file_splits(backward, heldout_fraction=0.25, seed=0)
    assert sorted(_questions(b.heldout)) == sorted(_questions(a.heldout))
    c = file_splits(forward, heldout_fraction=0.25, seed=1)
    assert _questions(c.heldout) != _questions(a.heldout)
    assert file_splits(forward, heldout_fraction=0.0).heldout == []
