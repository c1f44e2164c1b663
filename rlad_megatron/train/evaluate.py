"""Evaluation at the paper's protocol: k samples per prompt at temperature 0.6 and top-p 0.95
(eval.* in config/run.py; greedy stays an option with temperature 0 and k 1).

    mean@k      mean over prompts and k samples of the reward (1.0 = correct)   eval/accuracy
    pass@k      fraction of prompts with at least one correct sample among k   eval/pass_at_k
    steps       mean@k of the step-checked reward: the whole chain is right     eval/accuracy_steps
                (compact format only; the configured reward may be outcome-only)
    per level   the same for each difficulty level (metadata["level"])         eval/L3/accuracy
    se            standard error of mean@k over prompts: sd(per-prompt mean) / sqrt(n)
    length        mean response length in tokens

Prompts are the first eval.num_prompts of the eval.split (levels interleaved, so a prefix is
balanced), split over DP ranks in contiguous slices; records are gathered, so the numbers do not
depend on the layout. Sampling uses eval.seed, not the run's seed: every run evaluated with the same
eval.seed draws the same random numbers for the same prompt (a paired comparison between arms;
the row noise is layout-invariant, ops/sampling.py). `evaluate` also returns each prompt's
correct counts, which train/loop.py writes to RUN_DIR/eval/step_XXXXXXX.json for the paired
statistics of the reproduction (reproduce/stats.py).
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from pathlib import Path

import torch
import torch.distributed as dist

from rlad_megatron.rollout import generate
from rlad_megatron.runtime import devices
from rlad_megatron.train.generation import completions, generation_config, prompt_ids


def protocol_label(e) -> str:
    """What an evaluation measured, for every printed table: 'mean@4 (T=0.6, top-p 0.95)'."""
    if e.temperature == 0:
        return "greedy (mean@1)"
    return f"mean@{e.k} (T={e.temperature:g}, top-p {e.top_p:g})"


def rank_slice(n: int, dp: int, dp_rank: int) -> tuple[int, int]:
    """[start, stop) of the prompts DP rank `dp_rank` evaluates: contiguous, ceil(n / dp) each."""
    per_rank = -(-n // dp)
    start = min(dp_rank * per_rank, n)
    return start, min(start + per_rank, n)


def eval_items(run) -> list:
    e = run.cfg.eval
    items = run.splits.validation if e.split == "validation" else run.splits.heldout
    return items[:e.num_prompts] if e.num_prompts else list(items)


def evaluate(run, model, items, *, prefix: str = "eval") -> tuple[dict[str, float], str, list]:
    """(metrics, one sample completion, per-prompt records) for `model` on `items`.

    A record is {"id", "level", "correct", "reward", "steps_correct"}: counts (and the reward
    sum) over the eval.k samples of one prompt; steps_correct is None without a step check."""
    e = run.cfg.eval
    par = model.par  # the student's layout, or a teacher's own (teacher.parallel)
    start, stop = rank_slice(len(items), par.dp, par.dp_rank)
    mine = items[start:stop]
    gen = generation_config(run, "eval")
    # row ids are global (prompt index in `items` x k + sample), so every layout draws the same
    # noise for the same prompt and sample
    batch = generate(model, prompt_ids(run, mine), gen, seed=2**31 - 1 - e.seed,
                     row_offset=start * e.k) if mine else None
    texts = completions(run, batch) if mine else []
    steps_ok = run.fmt.steps_ok
    records = []
    for p, item in enumerate(mine):
        rows = texts[p * e.k:(p + 1) * e.k]
        rewards = [run.reward_fn(run.fmt.to_reward_text(t, item), item) for t in rows]
        records.append({"id": item.id, "level": item.metadata.get("level"),
                        "correct": sum(r >= 1.0 for r in rewards),
                        "reward": float(sum(rewards)),
                        "steps_correct": (sum(bool(steps_ok(t, item)) for t in rows)
                                          if steps_ok else None)})
    length = float(batch.response_lengths.sum()) if mine else 0.0
    if par.dp > 1:
        gathered = [None] * par.dp
        dist.all_gather_object(gathered, records, group=par.dp_group)
        records = [r for part in gathered for r in part]
        total = torch.tensor([length], dtype=torch.float64)
        devices.all_reduce(total, group=par.dp_group)
        length = float(total[0])
    metrics = summarize(records, e.k, prefix)
    metrics[f"{prefix}/response_len"] = length / max(len(records) * e.k, 1)
    return metrics, (texts[0] if texts else ""), records


def summarize(records: list[dict], k: int, prefix: str = "eval") -> dict[str, float]:
    """Metrics of per-prompt records (module docstring); pure, so tests check it by hand."""
    out: dict[str, float] = {f"{prefix}/num_prompts": float(len(records))}
    groups = {"": records}
    by_level = defaultdict(list)
    for r in records:
        if r.get("level") is not None:
            by_level[r["level"]].append(r)
    if len(by_level) > 1:
        groups.update({f"L{lv}/": rs for lv, rs in sorted(by_level.items())})
    for tag, rs in groups.items():
        n = len(rs)
        if n == 0:
            continue
        means = [r["reward"] / k for r in rs]
        mean = sum(means) / n
        var = sum((m - mean) ** 2 for m in means) / (n - 1) if n > 1 else 0.0
        out[f"{prefix}/{tag}accuracy"] = mean
        out[f"{prefix}/{tag}accuracy_se"] = math.sqrt(var / n)
        out[f"{prefix}/{tag}pass_at_{k}"] = sum(r["correct"] > 0 for r in rs) / n
        if rs[0].get("steps_correct") is not None:
            out[f"{prefix}/{tag}accuracy_steps"] = sum(r["steps_correct"] for r in rs) / (n * k)
    return out


def write_eval_records(cfg, step: int, records: dict[str, list]) -> Path:
    """RUN_DIR/eval/step_XXXXXXX.json: the protocol and each model's per-prompt records, written
    atomically (a temporary file renamed into place)."""
    folder = Path(cfg.run_dir) / "eval"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step_{step:07d}.json"
    e = cfg.eval
    doc = {"step": step, "protocol": protocol_label(e), "split": e.split, "k": e.k,
           "temperature": e.temperature, "top_p": e.top_p, "seed": e.seed, **records}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)
    return path
