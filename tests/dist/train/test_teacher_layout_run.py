"""`rlad train` with the teacher on its own layout (teacher.parallel) against the same run with
the teacher on the student's layout: the same rollouts (rewards and response lengths equal at
every step), teacher and loss statistics within fp32 round-off, and final student weights within
REL_WEIGHT_BOUND of the distance they moved (SGD, for the reason given in test_trainer.py).

A failure here with tests/dist/models/test_teacher_layout.py passing points at the wiring in
train/ (setup building the teacher's groups, phases.logprobs routing through the row exchange)."""

import contextlib
import json

import pytest
import torch

from distributed_helpers import assert_all_ranks
from tiny_runs import char_tokenizer, tiny_overrides
from rlad_megatron.runtime import destroy_parallel
from rlad_megatron.config.run import load_config
from rlad_megatron.train.loop import train
from rlad_megatron.train.setup import setup

SGD = ["optimizer.name=sgd", "optimizer.lr=0.5"]
REL_WEIGHT_BOUND = 1e-4
"""max |w_own - w_shared| / max |w_shared - w_start|: fp32 round-off through SGD steps (the
teacher's log-probs differ between TP=1 and TP=2 by ~1e-6, test_teacher_layout.py)."""


def _run(tmp, name, *extra, steps=True):
    cfg = load_config(None, tiny_overrides(char_tokenizer(tmp), tmp / name, "rlad")
                      + [*SGD, "eval.teacher=false", *extra])
    run = setup(cfg)
    if steps:
        train(cfg, run)
    weights = [p.detach().clone() for m in run.student.modules for p in m.parameters()]
    detached = run.teacher.par.detached
    destroy_parallel()
    return weights, detached


def _metrics(run_dir):
    return [m for m in (json.loads(line) for line in
                        (run_dir / "metrics.jsonl").read_text().splitlines())
            if "rollout/reward_mean" in m]


TRAJECTORIES = ["rollout.teacher_samples=2", "imitation.gate_aligned=false",
                "imitation.gate_advantage=false", "imitation.gate_explore=false",
                "imitation.weight=0.5"]
"""Teacher trajectories, every one imitated (the gates off): the teacher generates too."""


@pytest.mark.parametrize("student,teacher", [
    ([], ["teacher.parallel.tensor=2"]),
    (["parallel.tensor=2"], ["teacher.parallel.tensor=1"]),
    ([], ["teacher.parallel.pipeline=2", "teacher.offload=stream", "teacher.stream_window=1"]),
    (["parallel.tensor=2"], ["teacher.parallel.tensor=1", "teacher.score_during_rollout=true",
                             "rollout.micro_batch_size=4"]),
    (TRAJECTORIES, ["teacher.parallel.tensor=2"]),
], ids=["student-dp2_teacher-tp2", "student-tp2_teacher-tp1", "student-dp2_teacher-pp2-streamed",
        "student-tp2_teacher-tp1-during-rollout", "student-dp2_teacher-tp2-trajectories"])
def test_rlad_with_teacher_on_its_own_layout_trains_like_the_shared_layout(
        shared_tmp_path, student, teacher):
    """student: the run's settings (both runs); teacher: the own-layout run's additions."""
    name = "own_" + "_".join(s.split(".")[-1].replace("=", "") for s in student + teacher)
    start, _ = _run(shared_tmp_path, f"{name}_start", *student, steps=False)
    shared, shared_detached = _run(shared_tmp_path, f"{name}_shared", *student)
    stream = ["eval.teacher=false"] if "teacher.offload=stream" in teacher else []
    own, own_detached = _run(shared_tmp_path, f"{name}_own", *student, *teacher, *stream)
    assert_all_ranks(own_detached and not shared_detached,
                     f"teacher groups: own layout detached={own_detached}, shared "
                     f"detached={shared_detached}")
    moved = max((p - s).abs().max().item() for p, s in zip(shared, start))
    diff = max((a - b).abs().max().item() for a, b in zip(shared, own))
    assert_all_ranks(moved > 1e-3 and diff <= REL_WEIGHT_BOUND * moved,
                     f"final student weights: own vs shared teacher layout differ by {diff:.3e}, "
                     f"the weights moved {moved:.3e} (bound {REL_WEIGHT_BOUND} of it)")
    ok, detail = True, ""
    if torch.distributed.get_rank() == 0:
        runs = {v: _metrics(shared_tmp_path / f"{name}_{v}") for v in ("shared", "own")}
        exact = ("rollout/reward_mean", "rollout/response_len")
        keys = [k for k in runs["shared"][0]
                if k.split("/")[0] in ("loss", "trrd", "teacher", "imitation", "distill")]
        diffs = [(m["step"], k, m[k], n[k]) for m, n in zip(runs["own"], runs["shared"])
                 for k in keys if abs(m[k] - n[k]) > 1e-4 * max(1.0, abs(n[k]))]
        diffs += [(m["step"], k, m[k], n[k]) for m, n in zip(runs["own"], runs["shared"])
                  for k in exact if m[k] != n[k]]
        worst = max((abs(m[k] - n[k]) for m, n in zip(runs["own"], runs["shared"])
                     for k in keys), default=0.0)
        ok = not diffs and len(runs["own"]) == 2 and "teacher/logprob_mean" in keys
        detail = (f"differing (step, key, own, shared): {diffs[:5]}; max |diff| over "
                  f"{len(keys)} logged statistics {worst:.2e}; weights {diff:.2e} of {moved:.2e}")
        print(f"[{name}] {detail}")
    assert_all_ranks(ok, detail)


def test_teacher_evaluation_on_its_own_layout_draws_the_same_samples(shared_tmp_path):
    """eval.teacher with teacher.parallel: the teacher generates on its own groups (its DP ranks
    split the prompts, its TP group samples; megatron's globals unset meanwhile) and draws the
    same samples for every prompt as on the student's layout."""
    from teacher_layout_checks import globals_unset
    from rlad_megatron.train.evaluate import eval_items, evaluate

    out = {}
    for name, extra in (("shared", []), ("own", ["teacher.parallel.tensor=2"])):
        cfg = load_config(None, tiny_overrides(char_tokenizer(shared_tmp_path),
                                               shared_tmp_path / f"teacher_eval_{name}", "rlad")
                          + ["eval.num_prompts=0", "data.heldout_size=6", *extra])
        run = setup(cfg)
        with globals_unset() if extra else contextlib.nullcontext():
            metrics, _, records = evaluate(run, run.teacher, eval_items(run), prefix="t")
        out[name] = (metrics, records, run.teacher.par.detached)
        destroy_parallel()
    (m_s, r_s, d_s), (m_o, r_o, d_o) = out["shared"], out["own"]
    assert_all_ranks(d_o and not d_s and len(r_s) == 6 and r_s == r_o and m_s == m_o,
                     f"teacher evaluation differs between its own and the shared layout: "
                     f"{r_o} vs {r_s}")
    assert_all_ranks(0 < m_s["t/response_len"] < 10, f"{m_s}")


def test_sft_distill_with_teacher_traces_from_its_own_layout_trains_like_the_shared_layout(
        shared_tmp_path):
    """sft_distill: the teacher's traces, generated on its own groups (rollout/on_layout.py), are
    the shared layout's: the same traces kept, the same losses, the same final weights."""
    out = {}
    for name, extra in (("shared", []), ("own", ["teacher.parallel.tensor=2"])):
        cfg = load_config(None, tiny_overrides(char_tokenizer(shared_tmp_path),
                                               shared_tmp_path / f"sftd_{name}", "sft_distill")
                          + [*SGD, "eval.teacher=false", *extra])
        run = setup(cfg)
        train(cfg, run)
        out[name] = [p.detach().clone() for m in run.student.modules for p in m.parameters()]
        destroy_parallel()
    diff = max((a - b).abs().max().item() for a, b in zip(out["shared"], out["own"]))
    ok, detail = diff <= 1e-6, f"final weights differ by {diff:.3e}"
    if torch.distributed.get_rank() == 0:
        runs = {n: [m for m in (json.loads(line) for line in (
            shared_tmp_path / f"sftd_{n}" / "metrics.jsonl").read_text().splitlines())
            if "loss/sft" in m] for n in ("shared", "own")}
        same = [(m["sft/kept_frac"], m["loss/sft"]) for m in runs["own"]]
        ref = [(m["sft/kept_frac"], m["loss/sft"]) for m in runs["shared"]]
        ok = ok and len(same) == 2 and all(a[0] == b[0] and abs(a[1] - b[1]) <= 1e-5
                                           for a, b in zip(same, ref))
        detail += f"; (kept_frac, loss) own {same} vs shared {ref}"
        ok = ok and any(kept > 0 for kept, _ in ref)  # some traces kept: real updates
    assert_all_ranks(ok, detail)
