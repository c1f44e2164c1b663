"""Shared by the benchmarks: bench/results/NAME.json holds the latest result of each mode
({"full": {...}, "quick": {...}}), so a quick run never overwrites the kept full one."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

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


def timed_into(spent: dict, key: str, fn: Callable) -> Callable:
    """`fn`, adding the wall seconds of every call to spent[key] (profiles of a phase)."""
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            spent[key] += time.perf_counter() - start
    return wrapper
