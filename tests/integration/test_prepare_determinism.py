"""The same recipe prepared twice gives the same models, bit for bit, whatever the machine's
defaults: two fresh `rlad prepare` processes (through the reproduction's own launcher) with a
different PYTHONHASHSEED, another OMP_NUM_THREADS and another preferred CPU kernel path
(ATEN_CPU_CAPABILITY avx512 vs avx2, as an AVX-512 and an AVX2-only CPU would pick) write
identical tokenizer and checkpoint files.

A failure means `make demo` or `make reproduce` give other numbers on another machine of the same
kind: something in the preparation depends on hash order, thread count or the CPU's kernels."""

import hashlib
import os
from pathlib import Path

from tiny_runs import TINY_RECIPE

from rlad_megatron.reproduce.runner import prepare_stages

LARGER_TEACHER = ["teacher_sft.student.spec.num_layers=2",
                  "teacher_sft.student.spec.hidden_size=64",
                  "teacher_sft.student.spec.ffn_hidden_size=128", "teacher_sft.train.steps=30",
                  "teacher_sft.train.sft_batch_size=16", "student_sft.train.steps=10"]
"""Products large enough that MKL splits them over 2 threads and torch's AVX-512 and AVX2
reductions round differently (the test failed with these before the kernels and threads were
pinned)."""

ENVS = ({"PYTHONHASHSEED": "1", "OMP_NUM_THREADS": "2", "ATEN_CPU_CAPABILITY": "avx512"},
        {"PYTHONHASHSEED": "2", "OMP_NUM_THREADS": "1", "ATEN_CPU_CAPABILITY": "avx2"})


def _digests(cache: Path) -> dict[str, str]:
    """sha256 of the tokenizer and of every checkpoint data file (*.distcp) under `cache`."""
    files = [*cache.glob("tokenizer.*"), *cache.rglob("*.distcp")]
    return {str(f.relative_to(cache)): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def test_two_preparations_in_fresh_processes_are_bit_identical(tmp_path, monkeypatch):
    digests = []
    for i, env in enumerate(ENVS):
        recipe = tmp_path / f"recipe_{i}.yaml"
        recipe.write_text(TINY_RECIPE.format(cache=tmp_path / f"cache_{i}",
                                             run=tmp_path / f"run_{i}"))
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        monkeypatch.delenv("RLAD_NATIVE_CPU_KERNELS", raising=False)
        assert prepare_stages(str(recipe), LARGER_TEACHER, procs=1) == 0
        digests.append(_digests(tmp_path / f"cache_{i}"))
    first, second = digests
    assert len(first) >= 5 and any("teacher" in k for k in first) and any(
        "student" in k for k in first), sorted(first)
    differing = sorted(k for k in first if first[k] != second.get(k))
    assert first.keys() == second.keys() and not differing, (
        f"files differ between the two preparations: {differing}")
    assert os.environ["PYTHONHASHSEED"] == "2"
