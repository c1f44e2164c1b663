"""The golden-loss guard (issue 28, item 0): the first steps of a fixed tiny RLAD run per layout
(DP=2, TP=2, PP=2) log the losses and statistics committed in tests/golden/rlad_tiny.json.

A guard for moving code, as torchtitan keeps one: a refactor that changes no arithmetic keeps
every number; one that changes a number (a loss bound to other options, a teacher pass reading
other rows, a micro-batch cut differently) fails here before any longer run. It is a regression
reference, not a correctness one: the correctness tests compare against float64 maths and other
layouts (tests/dist/train/test_step.py, test_trainer.py).

Tolerance: the runs train with SGD (test_trainer.py SGD: a weight moves by lr x gradient, so
fp32 round-off is not amplified as Adam amplifies it where a gradient is near zero), three
steps, on whatever CPU runs the suite: another CPU's kernels (AVX2 / AVX-512, MKL's code paths)
round differently, by ~1e-7 relative per operation. Floating statistics are compared at 1e-4
relative (+1e-6 absolute, for values near 0); the sampled rollouts' reward mean and response
length exactly: the sampler's noise is an integer hash and its argmax would flip only on a
near-tie within that round-off.

Refreshing the file (only when a change is meant to change the numbers, said in its commit):
    RLAD_WRITE_GOLDEN=1 make test-dist   (or torchrun ... tests/dist/train/test_golden_losses.py)
"""

import json
import math
import os
from pathlib import Path

import pytest
import torch

from distributed_helpers import assert_all_ranks
from tiny_runs import char_tokenizer, tiny_overrides
from rlad_megatron.runtime import destroy_parallel
from rlad_megatron.config.run import load_config
from rlad_megatron.train.loop import train

GOLDEN = Path(__file__).resolve().parents[2] / "golden" / "rlad_tiny.json"
STEPS = 3
EXACT = ("rollout/reward_mean", "rollout/response_len")
CLOSE = ("loss/trrd", "trrd/ratio_mean", "trrd/ratio_max", "trrd/clip_frac_high_pos",
         "trrd/clip_frac_low_neg", "teacher/logprob_mean",
         "policy/entropy_mean", "optim/grad_norm", "selection/selected_frac")
RTOL, ATOL = 1e-4, 1e-6
LAYOUTS = {"dp2": [], "tp2": ["parallel.tensor=2"], "pp2": ["parallel.pipeline=2"]}


def _run(tmp: Path, layout: str) -> list[dict]:
    cfg = load_config(None, tiny_overrides(char_tokenizer(tmp), tmp / f"golden_{layout}", "rlad",
                                           steps=STEPS)
                      + LAYOUTS[layout] + ["optimizer.name=sgd", "optimizer.lr=0.5",
                                           "eval.at_start=false", "eval.teacher=false"])
    train(cfg)
    destroy_parallel()
    lines = (tmp / f"golden_{layout}" / "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(line) for line in lines]
    return [{k: m[k] for k in EXACT + CLOSE if k in m} for m in steps if "loss/trrd" in m]


def _differences(got: list[dict], want: list[dict]) -> list[tuple]:
    out = [("steps", len(got), len(want))] if len(got) != len(want) else []
    for step, (g, w) in enumerate(zip(got, want), start=1):
        if set(g) != set(w):
            out.append((step, "keys", sorted(set(g) ^ set(w))))
        for key in set(g) & set(w):
            a, b = g[key], w[key]
            same = a == b if key in EXACT else (
                math.isclose(a, b, rel_tol=RTOL, abs_tol=ATOL) or (math.isnan(a) and math.isnan(b)))
            if not same:
                out.append((step, key, a, b))
    return out


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_first_steps_log_the_committed_losses(shared_tmp_path, layout):
    got = _run(shared_tmp_path, layout)
    ok, detail = True, ""
    if torch.distributed.get_rank() == 0:  # one rank reads the log; every rank asserts
        if os.environ.get("RLAD_WRITE_GOLDEN") == "1":
            data = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
            data[layout] = got
            GOLDEN.parent.mkdir(parents=True, exist_ok=True)
            tmp = GOLDEN.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
            tmp.replace(GOLDEN)
        want = json.loads(GOLDEN.read_text()).get(layout, [])
        diffs = _differences(got, want)
        ok = not diffs and len(got) == STEPS
        detail = f"{layout}: (step, key, now, committed): {diffs[:8]}"
    assert_all_ranks(ok, detail)
