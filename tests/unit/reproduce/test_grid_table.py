"""reproduce/grid.py's map table from a hand-built map dict: each cell formatted as the other
tables format a paired difference (stats.signed: `*` only where the 95% CI excludes 0), a
single-seed cell without a CI, a cell not run named as such; the expected rows written out."""

import math

from rlad_megatron.reproduce.grid import markdown


def _est(mean, ci, n=3):
    return {"mean": mean, "ci95": ci, "n": n, "low": mean - ci, "high": mean + ci}


def _cell(diff):
    return {"diff": diff, "student_before": 0.271, "teacher": 0.879, "baseline_gain": 0.13,
            "arm_gain": 0.19, "baseline_diagnostics": {}, "arm_diagnostics": {}}


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
    assert "| weak__steps100 | 27.1 | 87.9 | +13.0 | +19.0 | - | - | - | - / - |" in lines
