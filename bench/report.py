"""Shared by the benchmarks: bench/results/NAME.json holds the latest result of each mode
({"full": {...}, "quick": {...}}), so a quick run never overwrites the kept full one."""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def write_result(name: str, mode: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    if not isinstance(data, dict) or not set(data) <= {"full", "quick"}:
        data = {}
    data[mode] = payload
    path.write_text(json.dumps(data, indent=2, default=str))
    return path
