"""`rlad map RECIPE [overrides]`: where RLAD beats GRPO. A grid of reproductions, one per cell
(student strength x training setting), each running the recipe's arms x seeds; the map is the
paired difference of one arm to the baseline in every cell, as a table and a heatmap.

    map:
      arm: rlad                 # compared with reproduce.baseline in every cell
      students:                 # rows: student strength; each its own student SFT
        weak: {student_sft.train.steps: 150}
        base: {}
        strong: {student_sft.train.steps: 1200}
      training:                 # columns: RL settings (any recipe override)
        steps100: {rl.train.steps: 100}
        steps200: {rl.train.steps: 200}

A cell is `rlad reproduce` with the row's and the column's overrides, its run directory
RUN_DIR/cells/ROW__COLUMN and its cache CACHE_DIR/map_students/ROW: a row trains its student
once and its cells share it; every row shares the recipe's teacher (its cached folder and the
tokenizer are hard-linked into the row's cache before the row's first cell, so the cache key,
relative to the cache folder, matches and the teacher is not trained again). Cells run one after
another, each with reproduce.jobs arms at once; an interrupted map resumes cell by cell as
`rlad reproduce` does. Output: RUN_DIR/map.json, map.md (per cell: the arm's paired difference
to the baseline with its 95% CI, both arms' gains over the student before RL, clip fractions,
the teacher clamp share, and the lucky share: correct answers reached through wrong steps, which
an outcome reward reinforces) and map.png.
Why a grid of reproductions rather than arms of one: student strength changes the preparation
(the student SFT), which one reproduction shares among its arms.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict

from rlad_megatron.config.run import merge_schema
from rlad_megatron.reproduce.plots import _figure
from rlad_megatron.reproduce.recipe import load_recipe, raw_section
from rlad_megatron.reproduce.runner import checked_plan, prepare_stages, reproduce
from rlad_megatron.reproduce.spec import dotted_overrides, parse_spec
from rlad_megatron.reproduce.stats import signed

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass
class MapSpec:
    """The recipe's `map` section (module docstring), read through this schema like the stages
    through RunConfig's (config/run.py merge_schema: unknown keys and wrong types are refused with
    the key named)."""

    arm: str = "rlad"
    """The arm compared with reproduce.baseline in every cell."""
    students: Dict[str, Any] = field(default_factory=dict)
    """Row name (a student strength) -> recipe overrides, nested or dotted
    ({student_sft.train.steps: 150}), or null."""
    training: Dict[str, Any] = field(default_factory=dict)
    """Column name (an RL setting) -> recipe overrides, as for students."""


def parse_map(raw: Any, where: str = "map") -> MapSpec:
    """The recipe's `map` section (a plain dict) -> MapSpec; errors name the key."""
    if not raw:
        raise ValueError(f"{where}: the recipe has no map section (map.students, map.training)")
    spec = merge_schema(MapSpec, raw, where=where)
    for axis, levels in (("students", spec.students), ("training", spec.training)):
        if not levels:
            raise ValueError(f"{where}.{axis}: at least one level is needed")
        for name, over in levels.items():
            if not _NAME.fullmatch(name) or "__" in name:
                raise ValueError(f"{where}.{axis}: {name!r} is not a usable level name (letters, "
                                 f"digits, '.', '_', '-'; no '__')")
            if not isinstance(over, (dict, type(None))):
                raise ValueError(f"{where}.{axis}.{name}: {over!r} is not a mapping of overrides")
    return spec


def cell_name(row: str, column: str) -> str:
    return f"{row}__{column}"


def cell_overrides(settings: dict, spec: MapSpec, row: str, column: str) -> list[str]:
    """The overrides that make a cell's reproduction (module docstring)."""
    return [*dotted_overrides(spec.students[row] or {}),
            *dotted_overrides(spec.training[column] or {}),
            f"cache_dir={Path(settings['cache_dir']) / 'map_students' / row}",
            f"run_dir={Path(settings['run_dir']) / 'cells' / cell_name(row, column)}"]


def share_teacher(cache: Path, row_cache: Path) -> None:
    """Hard-link the recipe's cached teacher and tokenizer into a row's cache (module docstring);
    what the row's cache already holds stays."""
    row_cache.mkdir(parents=True, exist_ok=True)
    if (cache / "tokenizer.model").exists() and not (row_cache / "tokenizer.model").exists():
        os.link(cache / "tokenizer.model", row_cache / "tokenizer.model")
    if (cache / "teacher").is_dir() and not (row_cache / "teacher").exists():
        shutil.copytree(cache / "teacher", row_cache / "teacher", copy_function=os.link)


def cell_summary(results: dict, arm: str) -> dict:
    """One cell of the map from its reproduction's results.json."""
    base = results["baseline"]
    before = (results.get("reference", {}).get("student_before") or {}).get("avg", math.nan)
    out = {"diff": results["diff"].get(arm, {}).get("avg"), "student_before": before,
           "teacher": (results.get("reference", {}).get("teacher") or {}).get("avg", math.nan),
           "seeds": results.get("seeds", [])}
    steps_before = ((results.get("reference_steps") or {}).get("student_before") or {}).get("avg")
    out["student_lucky"] = _lucky(steps_before, before)
    for name, key in ((base, "baseline"), (arm, "arm")):
        t = results["table1"].get(name, {}).get("avg")
        out[key] = t
        out[f"{key}_gain"] = (t["mean"] - before) if t else math.nan
        out[f"{key}_diagnostics"] = results["diagnostics"].get(name, {})
        steps = (results.get("table1_steps") or {}).get(name, {}).get("avg")
        out[f"{key}_lucky"] = _lucky(steps["mean"] if steps else None, t["mean"] if t else None)
    return out


def _lucky(steps_correct: float | None, correct: float | None) -> float:
    """The share of correct answers reached through wrong steps ("lucky" answers, reinforced by
    an outcome reward): 1 - step-checked mean@k / mean@k; nan where either is missing or 0."""
    if steps_correct is None or not correct:
        return math.nan
    return 1.0 - steps_correct / correct


def _pct(x: float) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:+.1f}"


def _share(x: float | None) -> str:
    return "-" if x is None or math.isnan(x) else f"{100 * x:.0f}%"


def _clip(diag: dict) -> str:
    """Clipped shares at both bounds, for A > 0 / A < 0 (reproduce/results.py DIAGNOSTICS)."""
    sides = [[diag[f"clip_frac_{b}_{sign}"] for b in ("low", "high")
              if f"clip_frac_{b}_{sign}" in diag] for sign in ("pos", "neg")]
    return " / ".join(f"{100 * sum(v):.2f}%" for v in sides) if all(sides) else "-"


def markdown(m: dict) -> str:
    arm, base = m["arm"], m["baseline"]
    lines = [f"# Where {arm} beats {base}: the map", "",
             f"Command: `{m['command']}`  ", f"Evaluation: {m['protocol']} on the {m['split']} "
             f"split; seeds {m['seeds']}. Cell: {arm} - {base}, paired seed by seed, mean ± 95% "
             "CI in points (`*`: the CI excludes 0).", "",
             "| student \\ training | " + " | ".join(m["columns"]) + " |",
             "|---|" + "---|" * len(m["columns"])]
    for row in m["rows"]:
        cells = []
        for col in m["columns"]:
            d = (m["cells"].get(cell_name(row, col)) or {}).get("diff")
            cells.append(signed(d) if d else "not run")
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    lines += ["", "Per cell: the student before RL and the teacher (%), each arm's gain over the "
              "student (points), the share of response tokens clipped at either bound for "
              f"A > 0 / A < 0, the teacher clamp share of {arm}, the training reward of the "
              "last 10 steps, and the lucky share: of the correct held-out answers, those reached "
              "through wrong steps (1 - step-checked / mean@k), before RL and after each arm.", "",
              f"| cell | student before | teacher | {base} gain | {arm} gain | {base} clipped | "
              f"{arm} clipped | {arm} teacher clamp | reward {base} / {arm} | "
              f"lucky: student / {base} / {arm} |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for name, c in m["cells"].items():
        clamp = c["arm_diagnostics"].get("teacher/clamp_frac")
        lucky = " / ".join(_share(c.get(f"{k}_lucky")) for k in ("student", "baseline", "arm"))
        rewards = " / ".join(f"{d['rollout/reward_mean']:.2f}" if "rollout/reward_mean" in d
                             else "-" for d in (c["baseline_diagnostics"], c["arm_diagnostics"]))
        lines.append(f"| {name} | {100 * c['student_before']:.1f} | {100 * c['teacher']:.1f} | "
                     f"{_pct(c['baseline_gain'])} | {_pct(c['arm_gain'])} | "
                     f"{_clip(c['baseline_diagnostics'])} | {_clip(c['arm_diagnostics'])} | "
                     f"{'-' if clamp is None else f'{100 * clamp:.1f}%'} | {rewards} | {lucky} |")
    return "\n".join(lines) + "\n"


def plot_map(m: dict, out: Path) -> Path:
    import numpy as np

    rows, cols = m["rows"], m["columns"]
    grid = np.full((len(rows), len(cols)), np.nan)
    text = [["" for _ in cols] for _ in rows]
    for i, row in enumerate(rows):
        for j, col in enumerate(cols):
            d = (m["cells"].get(cell_name(row, col)) or {}).get("diff")
            if d:
                grid[i, j] = 100 * d["mean"]
                text[i][j] = signed(d).replace(" ± ", "\n± ")  # the table's cell, in 2 lines
    fig, ax = _figure(1.6 * len(cols) + 2.5, 1.0 * len(rows) + 1.8)
    span = np.nanmax(np.abs(grid)) if np.isfinite(grid).any() else 1.0
    image = ax.imshow(grid, cmap="RdBu", vmin=-span, vmax=span, aspect="auto")
    for i in range(len(rows)):
        for j in range(len(cols)):  # white on the saturated end of the colour map
            dark = np.isfinite(grid[i, j]) and abs(grid[i, j]) > 0.6 * span
            ax.text(j, i, text[i][j] or "not run", ha="center", va="center", fontsize=9,
                    color="white" if dark else "black")
    ax.set_xticks(range(len(cols)), cols)
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel("training")
    ax.set_ylabel("student")
    ax.set_title(f"{m['arm']} - {m['baseline']}, {m['split']} mean@k (points, 95% CI)")
    fig.colorbar(image, ax=ax, label="points")
    fig.savefig(out)
    return out


def check_cell(path: str, overrides: list[str], cell: str) -> None:
    """What `rlad reproduce` checks before its work (reproduce/runner.py checked_plan), for one
    cell: every stage's and job's config valid, its run directory and cache folders ours;
    errors name the cell and its overrides."""
    try:
        checked_plan(path, overrides)
    except ValueError as e:
        raise ValueError(f"map cell {cell} ({' '.join(overrides)}): {e}") from None


def run_map(path: str, overrides: list[str], *, jobs: int | None = None) -> int:
    """Every cell's reproduction, then map.json / map.md / map.png (module docstring)."""
    settings, _, node = load_recipe(path, overrides)
    spec = parse_map(raw_section(path, "map"))
    repro = parse_spec(node)
    if spec.arm not in repro.arm_names or spec.arm == repro.baseline:
        raise ValueError(f"map.arm: {spec.arm!r} must be one of reproduce.arms other than the "
                         f"baseline {repro.baseline!r} ({', '.join(repro.arm_names)})")
    cells = [(r, c) for r in spec.students for c in spec.training]
    for row, col in cells:  # every cell's stages and jobs validated before any work
        check_cell(path, overrides + cell_overrides(settings, spec, row, col),
                   cell_name(row, col))
    run_dir, cache = Path(settings["run_dir"]), Path(settings["cache_dir"])
    code = prepare_stages(path, overrides, repro.prepare_procs)  # the shared teacher
    if code != 0:
        return 1
    failed = 0
    for row, col in cells:
        share_teacher(cache, cache / "map_students" / row)
        print(f"map: cell {cell_name(row, col)}", flush=True)
        failed += reproduce(path, overrides + cell_overrides(settings, spec, row, col),
                            jobs=jobs) != 0
    m = collect_map(spec, repro.baseline, run_dir)
    m["command"] = " ".join(["rlad", "map", path, *overrides])
    (run_dir / "map.json").write_text(json.dumps(m, indent=1))
    (run_dir / "map.md").write_text(markdown(m))
    plot_map(m, run_dir / "map.png")
    print("\n" + markdown(m), flush=True)
    print(f"map: wrote {run_dir / 'map.md'}, map.json, map.png", flush=True)
    return 1 if failed else 0


def collect_map(spec: MapSpec, baseline: str, run_dir: Path) -> dict:
    """Every cell's results.json -> the map's dict (cells not run are left out)."""
    cells, first = {}, None
    for row in spec.students:
        for col in spec.training:
            f = run_dir / "cells" / cell_name(row, col) / "results.json"
            if f.exists():
                results = json.loads(f.read_text())
                first = first or results
                cells[cell_name(row, col)] = cell_summary(results, spec.arm)
    return {"arm": spec.arm, "baseline": baseline, "rows": list(spec.students),
            "columns": list(spec.training), "cells": cells,
            "protocol": first["protocol"] if first else "", "split": first["split"] if first
            else "", "seeds": first["seeds"] if first else []}
