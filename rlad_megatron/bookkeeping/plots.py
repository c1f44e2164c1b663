"""The end-of-run figure: reward and held-out accuracy curves from RUN_DIR/metrics.jsonl.

    plot_run("runs/demo")                      # -> runs/demo/curves.png

Two panels: training reward per step (raw, faint, plus an exponential moving average) and
held-out accuracy at each evaluation (mean@k and pass@k), with the teacher's accuracy as a
dashed horizontal reference when it was logged. A panel whose keys never appear says "no data".
Drawn on an Agg canvas without pyplot, so it needs no display and leaves no global state.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Optional, Sequence

from rlad_megatron.bookkeeping.metrics import METRICS_FILE, read_metrics

DEFAULT_OUT = "curves.png"


def series(records: Sequence[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of `key`, sorted by step; non-numeric and non-finite values are skipped
    and a step logged twice keeps its last value."""
    by_step: dict[int, float] = {}
    for rec in records:
        value = rec.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            by_step[int(rec["step"])] = float(value)
    steps = sorted(by_step)
    return steps, [by_step[s] for s in steps]


def ema(values: Sequence[float], weight: float) -> list[float]:
    """Debiased exponential moving average: s_t = w*s_{t-1} + (1-w)*x_t, divided by 1 - w^t
    so that the first points are not pulled towards zero (weight 0 returns the values)."""
    out, acc = [], 0.0
    for t, x in enumerate(values, start=1):
        acc = weight * acc + (1.0 - weight) * x
        out.append(acc / (1.0 - weight ** t) if weight > 0 else acc)
    return out


def _no_data(ax, keys: Sequence[str]) -> None:
    ax.text(0.5, 0.5, "no data\n(" + ", ".join(keys) + ")", ha="center", va="center",
            transform=ax.transAxes, color="gray")


def _reward_panel(ax, records, keys: Sequence[str], smoothing: float) -> None:
    drawn = False
    for i, key in enumerate(keys):
        steps, values = series(records, key)
        if not steps:
            continue
        color = f"C{i}"
        ax.plot(steps, values, color=color, alpha=0.3, linewidth=1, label=f"{key} (raw)")
        ax.plot(steps, ema(values, smoothing), color=color, linewidth=2,
                label=f"{key} (EMA {smoothing:g})")
        drawn = True
    if not drawn:
        _no_data(ax, keys)
    else:
        ax.legend(fontsize="small")
    ax.set_title("training reward")
    ax.set_xlabel("step")
    ax.set_ylabel("reward")


def accuracy_panel(ax, records, keys: Sequence[str], teacher_key: Optional[str]) -> None:
    drawn = False
    for i, key in enumerate(keys):
        steps, values = series(records, key)
        if steps:
            ax.plot(steps, values, color=f"C{i}", marker="o", markersize=3, label=key)
            drawn = True
    if teacher_key:
        _, teacher = series(records, teacher_key)
        if teacher:
            ax.axhline(teacher[-1], color="black", linestyle="--", linewidth=1,
                       label=f"{teacher_key} = {teacher[-1]:.3f}")
            drawn = True
    if not drawn:
        _no_data(ax, [*keys, *([teacher_key] if teacher_key else [])])
    else:
        ax.legend(fontsize="small")
    ax.set_title("held-out accuracy")
    ax.set_xlabel("step")
    ax.set_ylabel("accuracy")


def plot_run(run_dir_or_jsonl: str | os.PathLike, out_png: Optional[str | os.PathLike] = None, *,
             reward_keys: Sequence[str] = ("rollout/reward_mean",),
             accuracy_keys: Sequence[str] = ("eval/accuracy", "eval/accuracy_steps"),
             teacher_key: Optional[str] = "eval_teacher/accuracy",
             smoothing: float = 0.8, title: Optional[str] = None) -> Path:
    """Write the reward / accuracy figure and return its path.

    `run_dir_or_jsonl` is a run directory (its metrics.jsonl is read) or a .jsonl file; the PNG
    goes to `out_png`, by default curves.png next to the metrics file. `smoothing` is the EMA
    weight of the reward curves (0: no smoothing). The title defaults to the run directory name.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    src = Path(run_dir_or_jsonl)
    jsonl = src / METRICS_FILE if src.is_dir() else src
    out = Path(out_png) if out_png is not None else jsonl.parent / DEFAULT_OUT
    records = read_metrics(jsonl)

    fig = Figure(figsize=(12, 4.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    reward_ax, acc_ax = fig.subplots(1, 2)
    _reward_panel(reward_ax, records, reward_keys, smoothing)
    accuracy_panel(acc_ax, records, accuracy_keys, teacher_key)
    for ax in (reward_ax, acc_ax):
        ax.grid(alpha=0.3)
    fig.suptitle(title or f"{jsonl.parent.resolve().name}: reward and held-out accuracy")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out
