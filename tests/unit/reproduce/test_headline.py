"""reproduce/headline.py: the sentence `rlad demo` prints for a committed result, from hand-built
results.json and map.json files whose expected sentences are written out here; a missing file,
and a file of another kind refused by reproduce.headline before any work."""

import json

import pytest
from omegaconf import OmegaConf

from rlad_megatron.reproduce.headline import headline
from rlad_megatron.reproduce.spec import parse_spec


def _est(mean, ci, n=3):
    """A paired difference as stats.mean_ci's as_dict writes it."""
    return {"mean": mean, "ci95": ci, "n": n, "low": mean - ci, "high": mean + ci}


RESULTS = {
    "baseline": "grpo", "steps": 200, "seeds": [1, 2, 3, 4, 5], "split": "heldout",
    "protocol": "mean@4 (T=0.6, top-p 0.95)",
    "arms": {"grpo": {"label": "GRPO"}, "rlad": {"label": "RLAD (alpha 0.5)"},
             "kdrl": {"label": "KDRL (beta 0.05)"}},
    "reference": {"student_before": {"avg": 0.271}, "teacher": {"avg": 0.879}},
    "table1": {"grpo": {"avg": _est(0.404, 0.05)}, "rlad": {"avg": _est(0.466, 0.03)},
               "kdrl": {"avg": _est(0.410, 0.04)}},
    "diff": {"rlad": {"avg": _est(0.062, 0.048)}, "kdrl": {"avg": _est(0.006, 0.02, n=2)}},
    "missing": ["kdrl seed 3"],
}

MAP = {"arm": "rlad", "baseline": "grpo", "rows": ["weak", "base"],
       "columns": ["steps100", "steps200"],
       "cells": {"weak__steps100": {"diff": _est(0.010, 0.03)},
                 "weak__steps200": {"diff": _est(-0.021, 0.01)},
                 "base__steps100": {"diff": _est(0.040, 0.02)},
                 "base__steps200": {"diff": None}}}


def test_reproduction_sentence(tmp_path):
    f = tmp_path / "results.json"
    f.write_text(json.dumps(RESULTS))
    assert headline(str(f)) == (
        f"Full run ({f}: 200 steps, heldout mean@4 (T=0.6, top-p 0.95), %): "
        "student 27.1, GRPO 40.4, RLAD (alpha 0.5) 46.6 (+6.2 ± 4.8* paired over 3 seed(s)), "
        "KDRL (beta 0.05) 41.0 (+0.6 ± 2.0 paired over 2 seed(s)); 1 run(s) not finished yet.")


def test_map_sentence_range_extremes_and_sure_cells(tmp_path):
    f = tmp_path / "map.json"
    f.write_text(json.dumps(MAP))
    # 3 measured cells (base__steps200 not run): lowest weak/steps200 (-2.1, CI 1.0: sure),
    # highest base/steps100 (+4.0, CI 2.0: sure), weak/steps100 (+1.0 ± 3.0) not sure
    assert headline(str(f)) == (
        f"Map ({f}): rlad - grpo over 3 of its 4 cells (student strength x training; the "
        "others not measured yet) runs from "
        "-2.1 ± 1.0* (weak, steps200) to +4.0 ± 2.0* (base, steps100); its CI excludes 0 in 2 "
        "of 3.")


def test_missing_file_and_wrong_kind(tmp_path):
    assert headline(str(tmp_path / "none.json")) == f"{tmp_path / 'none.json'}: not measured yet."
    other = tmp_path / "summary.json"
    other.write_text(json.dumps({"start_step": 0}))
    with pytest.raises(ValueError, match="summary.json is neither"):
        headline(str(other))
    node = OmegaConf.create({"arms": {"grpo": {"algorithm": "grpo"}},
                             "headline": [str(other)]})
    with pytest.raises(ValueError, match="reproduce.headline: .*summary.json"):
        parse_spec(node)
