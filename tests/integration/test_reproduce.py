"""`rlad reproduce` end to end on a tiny recipe: real teacher and student SFT (torchrun), two arms
plus one alpha arm x two seeds as real `rlad train` processes, then the tables and plots; a
second launch reuses every finished run; a foreign run directory is refused before any work.

A failure means `make reproduce` would not produce (or not resume) its results, or would write
into a folder it does not own.
"""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tiny_runs import TINY_RECIPE

REPO = Path(__file__).resolve().parents[2]


def _reproduce(recipe: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rlad_megatron.cli", "reproduce", str(recipe),
                           *extra], cwd=REPO, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    root = tmp_path_factory.mktemp("repro")
    recipe = root / "tiny.yaml"
    recipe.write_text(TINY_RECIPE.format(cache=root / "cache", run=root / "run"))
    out = _reproduce(recipe)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return root, recipe, out


def test_tables_and_plots_written(finished):
    root, _, out = finished
    run = root / "run"
    for name in ("results.md", "results.json", "curves.png", "alpha.png"):
        assert (run / name).stat().st_size > 0, name
    r = json.loads((run / "results.json").read_text())
    assert r["columns"] == ["L3", "L4", "avg"] and r["n_prompts"] == 8 and r["k"] == 2
    assert r["protocol"] == "mean@2 (T=0.6, top-p 0.95)"
    assert set(r["table1"]) == {"grpo", "rlad", "rlad_a0.3"} and not r["missing"]
    assert set(r["diff"]) == {"rlad", "rlad_a0.3"}
    assert [a for a, _ in r["alphas"]] == [0.3, 0.5]
    for arm in r["table1"].values():
        assert arm["avg"]["n"] == 2 and 0.0 <= arm["avg"]["mean"] <= 1.0
    # the average column is the mean over seeds of each seed's final mean@k, read back here
    for name, arm in r["arms"].items():
        finals = [s["final"]["avg"] for s in arm["seeds"].values()]
        assert r["table1"][name]["avg"]["mean"] == pytest.approx(sum(finals) / 2)
        for seed in arm["seeds"].values():
            assert sorted(int(s) for s in seed["curve"]) == [0, 1, 2]  # JSON keys
    # step 0 was evaluated once (by the first job with a teacher) and shared
    step0 = sorted(run.glob("arms/*/seed_*/eval/step_0000000.json"))
    assert [p.parts[-4:-2] for p in step0] == [("rlad", "seed_1")]
    assert "teacher" in json.loads(step0[0].read_text())
    md = (run / "results.md").read_text()
    for heading in ("## Table 1", "Paired difference", "step-checked", "## Table 5",
                    "## Table 4", "mean@2 (T=0.6, top-p 0.95)", "student before RL", "teacher"):
        assert heading in md, heading
    assert "RLAD (alpha 0.3)" in out.stdout and "vs grpo" in out.stdout


def test_second_launch_reuses_finished_runs(finished):
    root, recipe, _ = finished
    before = (root / "run" / "results.json").read_text()
    t0 = time.time()
    results = root / "run" / "results.json"  # and the demo's headline of a committed result
    again = _reproduce(recipe, f"reproduce.headline=[{results},{root / 'none.json'}]")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "reusing 6 finished run(s)" in again.stdout
    assert f"Full run ({results}: 2 steps, heldout mean@2" in again.stdout
    assert f"{root / 'none.json'}: not measured yet." in again.stdout
    assert "reusing" in again.stdout and time.time() - t0 < 120
    r0, r1 = json.loads(before), json.loads((root / "run" / "results.json").read_text())
    assert r0["table1"] == r1["table1"]


def test_foreign_run_dir_refused_before_any_work(finished, tmp_path):
    root, recipe, _ = finished
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("user data")
    out = _reproduce(recipe, f"run_dir={foreign}")
    assert out.returncode == 2 and "not made by rlad reproduce" in out.stderr
    assert (foreign / "keep.txt").read_text() == "user data"
    assert sorted(p.name for p in foreign.iterdir()) == ["keep.txt"]
    bad = _reproduce(recipe, "reproduce.baseline=kdrl", f"run_dir={tmp_path / 'new'}")
    assert bad.returncode == 2 and "reproduce.baseline" in bad.stderr
    assert not (tmp_path / "new").exists()


MAP = """extends: tiny.yaml
run_dir: {run}
map:
  arm: rlad
  students:
    s2: {{}}
    s4: {{student_sft.train.steps: 4}}
  training:
    steps3: {{rl.train.steps: 3}}
"""


def test_map_runs_a_reproduction_per_cell_sharing_the_teacher_and_each_rows_student(finished):
    """`rlad map`: 2 student strengths x 1 training setting, each cell a reproduction of grpo and
    rlad x 2 seeds; every row's cache gets the recipe's teacher (hard-linked, not trained again)
    and trains its own student once; map.json's cells are the paired differences that the cells'
    own results.json report; map.md and map.png are written."""
    root, _, _ = finished
    recipe = root / "map.yaml"
    recipe.write_text(MAP.format(run=root / "map"))
    out = subprocess.run([sys.executable, "-m", "rlad_megatron.cli", "map", str(recipe),
                          "reproduce.alphas=[]"],  # the tiny recipe's grpo and rlad arms only
                         cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    cache = root / "cache"
    for row, steps in (("s2", 2), ("s4", 4)):
        teacher = cache / "map_students" / row / "teacher"
        model = next(p for p in (cache / "teacher").rglob("*") if p.is_file())
        twin = teacher / model.relative_to(cache / "teacher")
        assert twin.stat().st_ino == model.stat().st_ino  # the same file: not trained again
        marker = (cache / "map_students" / row / "student" / "recipe_config.yaml").read_text()
        assert f"steps: {steps}" in marker
    m = json.loads((root / "map" / "map.json").read_text())
    assert m["rows"] == ["s2", "s4"] and m["columns"] == ["steps3"]
    assert sorted(m["cells"]) == ["s2__steps3", "s4__steps3"]
    for name, cell in m["cells"].items():
        r = json.loads((root / "map" / "cells" / name / "results.json").read_text())
        assert cell["diff"] == r["diff"]["rlad"]["avg"] and cell["diff"]["n"] == 2
        assert r["steps"] == 3  # the column's override
        assert cell["student_before"] == r["reference"]["student_before"]["avg"]
    md = (root / "map" / "map.md").read_text()
    assert "| s2 |" in md and "| s4 |" in md and "rlad - grpo" in md
    assert (root / "map" / "map.png").stat().st_size > 0


def test_a_bad_map_cell_is_refused_before_any_work(finished, tmp_path):
    """Every cell's stages and jobs are validated before the first cell trains: a column that
    makes an invalid run is named with its overrides, and nothing is written."""
    root, _, _ = finished
    recipe = root / "map_bad.yaml"
    bad_column = "steps3: {rl.train.steps: 3}\n    none: {rl.train.steps: 0}"
    recipe.write_text(MAP.format(run=tmp_path / "map").replace("steps3: {rl.train.steps: 3}",
                                                                bad_column))
    out = subprocess.run([sys.executable, "-m", "rlad_megatron.cli", "map", str(recipe),
                          "reproduce.alphas=[]"], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    assert "map cell s2__none" in out.stderr and "train.steps" in out.stderr, out.stderr[-2000:]
    assert not (tmp_path / "map").exists()
