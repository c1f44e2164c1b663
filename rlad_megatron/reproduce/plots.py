"""The reproduction's figures: curves.png (held-out mean@k over steps, mean and 95% CI band over
seeds per arm) and alpha.png (the alpha ablation, Table 5, beside the baseline)."""

from __future__ import annotations

import math
from pathlib import Path

from rlad_megatron.reproduce.stats import mean_ci


def _split(r: dict) -> str:
    return {"heldout": "held-out"}.get(r["split"], r["split"])


def _figure(width: float = 7.5, height: float = 4.5):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots()


def plot_curves(r: dict, out: Path) -> Path:
    fig, ax = _figure()
    for name, arm in r["arms"].items():
        steps = sorted({s for seed in arm["seeds"].values() for s in seed["curve"]})
        if not steps:
            continue
        est = [mean_ci([seed["curve"][s] for seed in arm["seeds"].values()
                        if seed["curve"].get(s) is not None]) for s in steps]
        mean = [100 * e.mean for e in est]
        line, = ax.plot(steps, mean, marker="o", label=arm["label"])
        if all(not math.isnan(e.half_width) for e in est):
            ax.fill_between(steps, [100 * e.low for e in est], [100 * e.high for e in est],
                            color=line.get_color(), alpha=0.15)
    teacher = (r.get("reference") or {}).get("teacher")
    note = f" (teacher {100 * teacher['avg']:.1f}%)" if teacher else ""  # off the axis: it
    # would squeeze the arms' curves into a few pixels
    ax.set_xlabel("RL step")
    ax.set_ylabel(f"{_split(r)} {r['protocol']} (%)")
    ax.set_title(f"{r['task']}: {_split(r)} accuracy, mean and 95% CI over "
                 f"{len(r['seeds'])} seed(s){note}", fontsize="medium")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out


def plot_alpha(r: dict, out: Path) -> Path:
    fig, ax = _figure(6.5, 4.2)
    alphas = [a for a, _ in r["alphas"]]
    rows = [r["table1"][name]["avg"] for _, name in r["alphas"]]
    yerr = [0 if math.isnan(e["ci95"]) else 100 * e["ci95"] for e in rows]
    ax.errorbar(alphas, [100 * e["mean"] for e in rows], yerr=yerr, marker="o", capsize=4,
                label="RLAD (TRRD)")
    base = r["table1"].get(r["baseline"])
    if base:
        b = base["avg"]
        ax.axhline(100 * b["mean"], color="gray", label=r["arms"][r["baseline"]]["label"])
        if not math.isnan(b["ci95"]):
            ax.axhspan(100 * b["low"], 100 * b["high"], color="gray", alpha=0.15)
    ax.set_xlabel("alpha (1 = GRPO's ratio, 0 = the teacher's)")
    ax.set_ylabel(f"{_split(r)} {r['protocol']} (%)")
    ax.set_title("Table 5: alpha ablation, mean and 95% CI over seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.savefig(out, format="png")
    return out
