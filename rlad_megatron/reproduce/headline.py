"""One sentence from a committed result: what `rlad demo` prints after its own short table, so that
a newcomer reads the full measurement beside the few steps the demo has time for.

    reproduce:
      headline: [docs/results/reproduce_learning/results.json, docs/results/map_learning/map.json]

A reproduction's results.json (reproduce/results.py) gives: the student before RL, the baseline,
every other arm's average with its paired difference to the baseline (95% CI over seeds, `*`
where the CI excludes 0, and how many seeds it pairs), and how many runs are not finished. A map's
map.json (reproduce/grid.py) gives the range of the arm's paired difference over the cells, the
cells where it is largest and smallest, and in how many cells the CI excludes 0. A file that is
not there yet says so; a file of another kind is refused by name. The files are JSON written by
this project (json.loads, nothing executed).
"""

from __future__ import annotations

import json
from pathlib import Path

from rlad_megatron.reproduce.stats import excludes_zero, signed


def _pts(x: float) -> str:
    return f"{100 * x:.1f}"


def reproduction_sentence(r: dict, source: str) -> str:
    """`source` names the file; r: a reproduction's results.json."""
    base = r["baseline"]
    label = {name: a["label"] for name, a in r["arms"].items()}
    before = (r.get("reference", {}).get("student_before") or {}).get("avg")
    parts = [f"student {_pts(before)}" if before is not None else None]
    base_row = r["table1"].get(base)
    if base_row:
        parts.append(f"{label[base]} {_pts(base_row['avg']['mean'])}")
    for name, row in r["table1"].items():
        if name == base or name not in r["diff"]:
            continue
        d = r["diff"][name]["avg"]
        parts.append(f"{label[name]} {_pts(row['avg']['mean'])} ({signed(d)} paired over "
                     f"{d['n']} seed(s))")
    missing = r.get("missing") or []
    return (f"Full run ({source}: {r['steps']} steps, {r['split']} {r['protocol']}, %): "
            + ", ".join(p for p in parts if p)
            + (f"; {len(missing)} run(s) not finished yet" if missing else "") + ".")


def map_sentence(m: dict, source: str) -> str:
    """m: a map's map.json."""
    cells = {name: c["diff"] for name, c in m["cells"].items() if c.get("diff")}
    arm, base = m["arm"], m["baseline"]
    if not cells:
        return f"Map ({source}): no cell measured yet."
    hi = max(cells, key=lambda n: cells[n]["mean"])
    lo = min(cells, key=lambda n: cells[n]["mean"])
    sure = [n for n, d in cells.items() if excludes_zero(d)]
    total = len(m.get("rows", [])) * len(m.get("columns", []))
    over = (f"{len(cells)} cells (student strength x training)" if len(cells) >= total
            else f"{len(cells)} of its {total} cells (student strength x training; the others "
                 "not measured yet)")
    return (f"Map ({source}): {arm} - {base} over {over} runs from {signed(cells[lo])} "
            f"({lo.replace('__', ', ')}) to "
            f"{signed(cells[hi])} ({hi.replace('__', ', ')}); its CI excludes 0 in {len(sure)} "
            f"of {len(cells)}.")


def headline(path: str) -> str:
    """The sentence of one committed file (module docstring)."""
    f = Path(path)
    if not f.exists():
        return f"{path}: not measured yet."
    data = json.loads(f.read_text())
    if "cells" in data and "arm" in data:
        return map_sentence(data, path)
    if "table1" in data and "diff" in data:
        return reproduction_sentence(data, path)
    raise ValueError(f"reproduce.headline: {path} is neither a reproduction's results.json nor "
                     "a map's map.json")
