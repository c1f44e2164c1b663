"""The reproduction's tables and plots, read back from the finished runs' files:

    RUN_DIR/arms/ARM/seed_S/eval/step_XXXXXXX.json   per-prompt records (train/evaluate.py)
    RUN_DIR/arms/ARM/seed_S/metrics.jsonl            phase timers (time/<phase>_s)

and written as results.json, results.md, curves.png and alpha.png:
  * Table 1 (the paper's K&K table in miniature): rows = the student before RL, the teacher and
    each arm; columns = difficulty levels and their average; mean +- 95% CI over seeds of the
    final held-out mean@k; then each arm's paired difference to the baseline (seed by seed) with
    its CI, and the evaluation's own standard error (reproduce/stats.py). The same table for the
    step-checked accuracy follows as its own rows.
  * Table 5: the average against alpha (RLAD arms), beside the baseline and KDRL.
  * Table 4: seconds per step by phase for each arm (mean over steps and seeds).
Missing runs (failed or not yet finished) are listed, never silently averaged over.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from pathlib import Path

from rlad_megatron.reproduce.spec import Job, ReproduceSpec, alpha_arm, arm_label
from rlad_megatron.reproduce.stats import (eval_se, mean_ci, paired_difference, paired_eval_se,
                                           pooled_se, prompt_means, signed)
from rlad_megatron.bookkeeping.metrics import read_metrics

PHASES = ("rollout", "reward", "old_logprobs", "teacher_logprobs", "update", "step")


def _read_eval(run_dir: Path, step: int) -> dict:
    return json.loads((run_dir / "eval" / f"step_{step:07d}.json").read_text())


def _eval_steps(run_dir: Path) -> list[int]:
    folder = run_dir / "eval"
    if not folder.is_dir():
        return []
    return sorted(int(p.stem.split("_")[1]) for p in folder.glob("step_*.json"))


def _scores(records: list[dict], k: int, levels: list, field: str) -> dict[str, float]:
    """{'avg': mean@k, 'L3': ..., ...} of one evaluation (fractions)."""
    out = {}
    for lv in [None, *levels]:
        means = prompt_means(records, k, lv, field)
        if means:
            out["avg" if lv is None else f"L{lv}"] = sum(means.values()) / len(means)
    return out


def _timings(records: list[dict]) -> dict[str, float]:
    """Mean seconds of each phase per step; "step" is the median whole step (a step that ran an
    evaluation or a checkpoint counts those in time/step_s, the median leaves them out);
    "run_wall" the first to last logged record of the run. `records`: its metrics.jsonl."""
    rows = [r for r in records if "time/step_s" in r]
    if not rows:
        return {}
    out = {p: sum(float(r.get(f"time/{p}_s", 0.0)) for r in rows) / len(rows)
           for p in PHASES if p != "step"}
    out["step"] = statistics.median(float(r["time/step_s"]) for r in rows)
    times = [float(r["time"]) for r in records if "time" in r]
    out["run_wall"] = max(times) - min(times)
    return out


DIAGNOSTICS = ("clip_frac_low_pos", "clip_frac_high_pos", "clip_frac_low_neg",
               "clip_frac_high_neg", "teacher/clamp_frac", "teacher/logratio_mean",
               "rollout/reward_mean")
"""Per arm, mean over steps and seeds: the surrogate's clip fractions by bound and advantage sign
(trrd/ or grpo/; losses/metrics.py), the share of tokens whose teacher log-ratio hit the clamp,
the mean log-ratio lp_S - lp_T over the sampled tokens, and the training reward (last 10
steps)."""


def _diagnostics(records: list[dict]) -> dict[str, float]:
    rows = [r for r in records if "time/step_s" in r]
    out = {}
    for key in DIAGNOSTICS:
        use = rows[-10:] if key == "rollout/reward_mean" else rows
        vals = [v for r in use for k, v in r.items()
                if (k == key or (key.startswith("clip") and k.endswith("/" + key)))]
        if vals:
            out[key] = sum(vals) / len(vals)
    return out


def _columns(levels: list) -> list[str]:
    """The tables' columns: one per difficulty level and their average (one level: the average)."""
    return [f"L{lv}" for lv in levels] + ["avg"] if len(levels) > 1 else ["avg"]


def collect(jobs: list[Job], spec: ReproduceSpec, run_dir: Path) -> dict:
    """Read every finished job back and compute the tables (module docstring)."""
    first = jobs[0].cfg
    k, levels = first.eval.k, list(first.data.levels)
    cols = _columns(levels)
    arms: dict[str, dict] = {}
    missing, before, teacher = [], None, None
    for job in jobs:
        a = arms.setdefault(job.arm, {"label": arm_label(spec, job.arm, jobs),
                                      "algorithm": job.cfg.algorithm,
                                      "alpha": job.cfg.loss.trrd.alpha
                                      if job.cfg.algorithm == "rlad" else None,
                                      "seeds": {}})
        docs = {step: _read_eval(job.run_dir, step) for step in _eval_steps(job.run_dir)}
        final = docs.get(job.cfg.train.steps)
        if final is None or not (job.run_dir / "summary.json").exists():
            missing.append(f"{job.arm} seed {job.seed}")
            continue
        if 0 in docs:
            before = before or docs[0]["student"]
            teacher = teacher or docs[0].get("teacher")
        records = read_metrics(job.run_dir)
        means = prompt_means(final["student"], k)
        a["seeds"][job.seed] = {
            "final": _scores(final["student"], k, levels, "reward"),
            "steps": _scores(final["student"], k, levels, "steps_correct"),
            "prompt_means": means, "eval_se": eval_se(means),
            # step 0 is shared (reproduce/spec.py): added below for the runs without it
            "curve": {step: _scores(doc["student"], k, [], "reward").get("avg")
                      for step, doc in docs.items()},
            "time": _timings(records), "diagnostics": _diagnostics(records)}
    if before:
        start_acc = _scores(before, k, [], "reward").get("avg")
        for a in arms.values():
            for s in a["seeds"].values():
                s["curve"].setdefault(0, start_acc)
                s["curve"] = dict(sorted(s["curve"].items()))
    base = arms.get(spec.baseline, {"seeds": {}})
    tables = {"table1": {}, "table1_steps": {}, "diff": {}, "table4": {}, "diagnostics": {}}
    for name, a in arms.items():
        seeds = a["seeds"]
        if not seeds:
            continue
        for table, field in (("table1", "final"), ("table1_steps", "steps")):
            tables[table][name] = {c: mean_ci([s[field].get(c, math.nan) for s in seeds.values()
                                               if c in s[field]]).as_dict() for c in cols}
        tables["table1"][name]["eval_se"] = pooled_se([s["eval_se"] for s in seeds.values()])
        if name != spec.baseline and base["seeds"]:
            tables["diff"][name] = {c: paired_difference(
                {sd: s["final"][c] for sd, s in seeds.items() if c in s["final"]},
                {sd: s["final"][c] for sd, s in base["seeds"].items() if c in s["final"]}
            ).as_dict() for c in cols}
            tables["diff"][name]["eval_se"] = pooled_se([
                paired_eval_se(s["prompt_means"], base["seeds"][sd]["prompt_means"])
                for sd, s in seeds.items() if sd in base["seeds"]])
        tables["table4"][name] = {p: sum(s["time"].get(p, 0.0) for s in seeds.values())
                                  / len(seeds) for p in PHASES}
        tables["diagnostics"][name] = {
            d: sum(vals) / len(vals) for d in DIAGNOSTICS
            if (vals := [s["diagnostics"][d] for s in seeds.values() if d in s["diagnostics"]])}
    ablation = ["rlad"] + [alpha_arm(a) for a in spec.alphas] if spec.alphas else []
    alpha_rows = sorted((arms[name]["alpha"], name) for name in ablation
                        if name in arms and arms[name]["seeds"])
    for a in arms.values():
        for s in a["seeds"].values():
            s.pop("prompt_means")
    ref = {"student_before": before, "teacher": teacher}
    fixed = {key: (_scores(recs, k, levels, "reward") | {
        "eval_se": eval_se(prompt_means(recs, k))}) if recs else None
        for key, recs in ref.items()}
    fixed_steps = {key: _scores(recs, k, levels, "steps_correct") if recs else None
                   for key, recs in ref.items()}
    return {"protocol": f"mean@{k} (T={first.eval.temperature:g}, top-p {first.eval.top_p:g})"
            if first.eval.temperature else "greedy (mean@1)",
            "split": first.eval.split, "k": k, "levels": levels, "columns": cols,
            "level_name": "terms" if first.data.task == "chain_sum" else "people",
            "task": first.data.task, "steps": first.train.steps,
            "n_prompts": len(before) if before else 0,
            "baseline": spec.baseline,
            "seeds": sorted({sd for a in arms.values() for sd in a["seeds"]}), "arms": arms,
            "reference": fixed, "reference_steps": fixed_steps, "alphas": alpha_rows,
            "missing": missing, "runs_wall_s": _runs_wall(arms), **tables}


def _runs_wall(arms: dict) -> float:
    """Seconds the runs in the tables took, added up (each run's first to last record)."""
    return sum(s["time"].get("run_wall", 0.0) for a in arms.values() for s in a["seeds"].values())


def check_results(r: dict) -> None:
    """Every summary field of a results dict describes the runs its tables hold: the seeds are
    the seeds found, each arm's row averages as many seeds as it has, the columns are the levels,
    runs_wall_s adds up the runs' own times. Raises ValueError naming the field."""
    found = sorted({int(sd) for a in r["arms"].values() for sd in a["seeds"]})
    problems = []
    if [int(sd) for sd in r["seeds"]] != found:
        problems.append(f"seeds {r['seeds']} but the arms hold seeds {found}")
    if r["columns"] != _columns(r["levels"]):
        problems.append(f"columns {r['columns']} but levels {r['levels']}")
    for name, row in r["table1"].items():
        if row["avg"]["n"] != len(r["arms"][name]["seeds"]):
            problems.append(f"table1 {name} averages {row['avg']['n']} seeds, the arm has "
                            f"{len(r['arms'][name]['seeds'])}")
    if not math.isclose(r.get("runs_wall_s", math.nan), _runs_wall(r["arms"]), rel_tol=1e-9):
        problems.append(f"runs_wall_s {r.get('runs_wall_s')} but the runs took "
                        f"{_runs_wall(r['arms'])}")
    if problems:
        raise ValueError("results disagree with their own tables: " + "; ".join(problems))


def _pct(est: dict | float | None, ci: bool = True) -> str:
    if est is None:
        return "-"
    if isinstance(est, dict):
        m, h = est["mean"], est["ci95"]
        if math.isnan(m):
            return "-"
        return f"{100 * m:.1f}" + (f" ± {100 * h:.1f}" if ci and not math.isnan(h) else "")
    return "-" if math.isnan(est) else f"{100 * est:.1f}"


def _header(r: dict, first: str, extra: list[str]) -> list[str]:
    names = [f"{c[1:]} {r['level_name']}" if c.startswith("L") else "average"
             for c in r["columns"]]
    cells = [first, *names, *extra]
    return ["| " + " | ".join(cells) + " |", "|" + "---|" * len(cells)]


def _table1(r: dict, key: str, ref_key: str, title: str) -> list[str]:
    lines = [title, ""] + _header(r, "model", ["eval SE"] if key == "table1" else [])
    for name, ref in (("student before RL", "student_before"), ("teacher", "teacher")):
        scores = r[ref_key].get(ref) if r[ref_key] else None
        if scores:
            cells = [_pct(scores.get(c)) for c in r["columns"]]
            if key == "table1":
                cells.append(_pct(scores.get("eval_se")))
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for name, row in r[key].items():
        cells = [_pct(row[c]) for c in r["columns"]]
        if key == "table1":
            cells.append(_pct(row.get("eval_se")))
        lines.append(f"| {r['arms'][name]['label']} | " + " | ".join(cells) + " |")
    return lines


def markdown(r: dict) -> str:
    n_seeds = len(r["seeds"])
    spread = (f"mean ± 95% CI over seeds (Student t, {n_seeds - 1} d.f.)" if n_seeds > 1 else
              "one seed, so no interval over seeds")
    out = [f"# Reproduction: {r['task']}, {r['steps']} RL steps, {n_seeds} seed"
           f"{'s' if n_seeds != 1 else ''}",
           "", f"Command: `{r.get('command', '')}`  ", f"Evaluation: {r['protocol']} on the "
           f"{_split(r)} split ({r['n_prompts']} prompts, the same prompts and sampling seed for "
           f"every run). Accuracy in %, {spread}; "
           "eval SE: the evaluation's own standard error over prompts (pooled over seeds).",
           f"Compute: {r['runs_wall_s'] / 3600:.2f} h of runs (each run's own wall time, added "
           "up).", ""]
    out += _table1(r, "table1", "reference",
                   f"## Table 1: outcome reward (the final answer), {_split(r)} mean@k")
    if r["diff"]:
        out += ["", f"Paired difference to {r['arms'][r['baseline']]['label']} (seed by seed; "
                "* = the 95% CI excludes 0):", ""]
        out += _header(r, "arm", ["eval SE of the difference"])
        for name, row in r["diff"].items():
            cells = [signed(row[c]) for c in r["columns"]] + [_pct(row.get("eval_se"))]
            out.append(f"| {r['arms'][name]['label']} | " + " | ".join(cells) + " |")
    out += [""] + _table1(r, "table1_steps", "reference_steps",
                          "## Table 1, step-checked: every step of the chain right")
    if len(r["alphas"]) > 1:
        out += ["", "## Table 5: alpha ablation (average over levels)", "",
                "| alpha | mean@k | difference to the baseline |", "|---|---|---|"]
        for alpha, name in r["alphas"]:
            diff = r["diff"].get(name)
            out.append(f"| {alpha:g} | {_pct(r['table1'][name]['avg'])} | "
                       f"{signed(diff['avg']) if diff else '-'} |")
    out += ["", "## Table 4: seconds per step by phase (mean over steps and seeds; step: the "
            "median whole step, evaluations excluded)", "",
            "| arm | " + " | ".join(p.replace("_", " ") for p in PHASES) + " |",
            "|" + "---|" * (len(PHASES) + 1)]
    for name, row in r["table4"].items():
        out.append(f"| {r['arms'][name]['label']} | " +
                   " | ".join(f"{row[p]:.3f}" for p in PHASES) + " |")
    diag = {n: row for n, row in r.get("diagnostics", {}).items() if row}
    if diag:
        out += ["", "## Diagnostics (mean over steps and seeds): where the trust region bites", "",
                "clip fractions: share of response tokens clipped at the low (1 - eps_low) or "
                "high (1 + eps_high) bound, for positive and negative advantages; clamp: share of "
                "tokens whose teacher log-ratio hit +-c; log-ratio: mean lp_S - lp_T over the "
                "sampled tokens (how much more the student likes its samples than the teacher "
                "does); "
                "reward: training reward over the last 10 steps.", "",
                "| arm | clip low, A>0 | clip high, A>0 | clip low, A<0 | clip high, A<0 | "
                "teacher clamp | log-ratio to teacher | reward |", "|" + "---|" * 8]
        for name, row in diag.items():
            cells = [f"{row[d]:.4f}" if d in row else "-" for d in DIAGNOSTICS]
            out.append(f"| {r['arms'][name]['label']} | " + " | ".join(cells) + " |")
    if r["missing"]:
        out += ["", "Missing runs (failed or unfinished): " + ", ".join(r["missing"])]
    return "\n".join(out) + "\n"


def _split(r: dict) -> str:
    return {"heldout": "held-out"}.get(r["split"], r["split"])


def summary_lines(r: dict) -> str:
    """The short console table: before / teacher / each arm's average and difference."""
    n = len(r["seeds"])
    spread = f"mean ± 95% CI over {n} seeds" if n > 1 else "one seed, no interval"
    lines = [f"{_split(r)} split, {r['protocol']}, {r['n_prompts']} prompts, average over "
             f"levels, % ({spread}); outcome reward, then step-checked:"]
    for name, ref in (("student before RL", "student_before"), ("teacher", "teacher")):
        scores, steps = r["reference"].get(ref), (r["reference_steps"] or {}).get(ref) or {}
        if scores:
            lines.append(f"  {name:<40} {_pct(scores['avg']):<14} {_pct(steps.get('avg'))}")
    for name, row in r["table1"].items():
        diff = r["diff"].get(name)
        lines.append(f"  {r['arms'][name]['label']:<40} {_pct(row['avg']):<14} "
                     f"{_pct(r['table1_steps'][name]['avg']):<14}"
                     + (f" vs {r['baseline']}: {signed(diff['avg'])}" if diff else ""))
    return "\n".join(lines)


def write_results(r: dict, run_dir: Path) -> list[Path]:
    from rlad_megatron.reproduce.plots import plot_alpha, plot_curves

    check_results(r)
    r["summary_md"] = summary_lines(r)
    files = []
    for name, text in (("results.json", json.dumps(r, indent=1, default=str)),
                       ("results.md", markdown(r))):
        path = run_dir / name
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
        files.append(path)
    files.append(plot_curves(r, run_dir / "curves.png"))
    if len(r["alphas"]) > 1:
        files.append(plot_alpha(r, run_dir / "alpha.png"))
    return files
