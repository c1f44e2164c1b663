"""reproduce/grid.py's map from hand-built inputs: a cell's summary of its reproduction's
results.json (gains over the student, the lucky shares, worked out by hand below), and the map
table, each cell formatted as the other tables format a paired difference (stats.signed: `*`
only where the 95% CI excludes 0), a single-seed cell without a CI, a cell not run named as such;
the expected rows written out."""

import math

import pytest

from rlad_megatron.reproduce.grid import cell_summary, markdown


def _est(mean, ci, n=3):
    return {"mean": mean, "ci95": ci, "n": n, "low": mean - ci, "high": mean + ci}


def _cell(diff):
    return {"diff": diff, "student_before": 0.271, "teacher": 0.879, "baseline_gain": 0.13,
            "arm_gain": 0.19, "baseline_diagnostics": {}, "arm_diagnostics": {},
            "student_lucky": 0.30, "baseline_lucky": 0.25, "arm_lucky": math.nan}


MAP = {"arm": "rlad", "baseline": "grpo", "rows": ["weak", "base"],
       "columns": ["steps100", "steps200"], "command": "rlad map m.yaml",
       "protocol": "mean@4", "split": "heldout", "seeds": [1, 2, 3],
       "cells": {"weak__steps100": _cell(_est(0.050, 0.020)),        # CI [3, 7]: sure
                 "weak__steps200": _cell(_est(-0.010, 0.030)),       # CI [-4, 2]: not sure
                 "base__steps100": _cell(_est(0.040, math.nan, n=1))}}  # one seed: no CI


def test_cells_use_the_tables_formatter():
    lines = markdown(MAP).splitlines()
    assert "| weak | +5.0 ± 2.0* | -1.0 ± 3.0 |" in lines
    assert "| base | +4.0 | not run |" in lines
    assert ("| weak__steps100 | 27.1 | 87.9 | +13.0 | +19.0 | - | - | - | - / - | 30% / 25% / - |"
            in lines)


RESULTS = {
    "baseline": "grpo", "seeds": [1, 2, 3],
    "reference": {"student_before": {"avg": 0.25}, "teacher": {"avg": 0.90}},
    "reference_steps": {"student_before": {"avg": 0.20}},
    "table1": {"grpo": {"avg": _est(0.40, 0.02)}, "rlad": {"avg": _est(0.50, 0.02)}},
    "table1_steps": {"grpo": {"avg": _est(0.30, 0.02)}, "rlad": {"avg": _est(0.45, 0.02)}},
    "diff": {"rlad": {"avg": _est(0.10, 0.03)}},
    "diagnostics": {"grpo": {"clip_frac_low_pos": 0.001}, "rlad": {"teacher/clamp_frac": 0.07}},
}


def test_cell_summary_gains_and_lucky_shares():
    c = cell_summary(RESULTS, "rlad")
    assert c["diff"] == RESULTS["diff"]["rlad"]["avg"] and c["seeds"] == [1, 2, 3]
    assert c["baseline_gain"] == pytest.approx(0.15) and c["arm_gain"] == pytest.approx(0.25)
    # lucky share = 1 - step-checked / correct: 1 - 20/25, 1 - 30/40, 1 - 45/50
    assert c["student_lucky"] == pytest.approx(0.20)
    assert c["baseline_lucky"] == pytest.approx(0.25)
    assert c["arm_lucky"] == pytest.approx(0.10)
    assert c["arm_diagnostics"] == {"teacher/clamp_frac": 0.07}
    # without a step check (reference_steps None, no table1_steps) the shares are unknown
    plain = {**RESULTS, "reference_steps": None, "table1_steps": {}}
    c = cell_summary(plain, "rlad")
    assert all(math.isnan(c[k]) for k in ("student_lucky", "baseline_lucky", "arm_lucky"))
