"""The committed reproductions (docs/results/*/results.json) describe the runs their own tables
hold, and their results.md is what the JSON renders to: no field can be left over from another
launch (a run relaunched with fewer seeds, a test recipe, a reused launch's wall time)."""

import copy
import json
from pathlib import Path

import pytest

from rlad_megatron.reproduce.results import check_results, markdown

RESULTS = sorted((Path(__file__).resolve().parents[3] / "docs" / "results").glob("*/results.json"))


@pytest.mark.parametrize("path", RESULTS, ids=[p.parent.name for p in RESULTS])
def test_committed_results_agree_with_their_tables_and_markdown(path):
    r = json.loads(path.read_text())
    check_results(r)
    assert markdown(r) == (path.parent / "results.md").read_text()
    n = len(r["seeds"])
    assert (f"{n} seeds" if n > 1 else "one seed, no interval") in r["summary_md"]


def test_a_field_from_another_run_is_refused():
    r = json.loads(RESULTS[0].read_text())
    for field, value, message in (("seeds", [1, 2], "seeds"), ("levels", [3, 4], "columns"),
                                  ("runs_wall_s", 8.97, "runs_wall_s")):
        bad = copy.deepcopy(r)
        bad[field] = value
        with pytest.raises(ValueError, match=message):
            check_results(bad)


def test_a_one_seed_table_says_it_has_no_interval():
    r = json.loads(RESULTS[0].read_text())
    keep = r["seeds"][0]
    for arm in r["arms"].values():
        arm["seeds"] = {k: v for k, v in arm["seeds"].items() if int(k) == keep}
    r["seeds"] = [keep]
    text = markdown(r)
    assert "one seed, so no interval over seeds" in text and "0 d.f." not in text
