"""`rlad train` end to end, in-process on the 2-rank launch: every algorithm at TP=2 and at PP=2
(a couple of steps of tiny random-weight models), and resuming a TP=2 run at TP=1.

A failure in the per-algorithm run usually names the phase (rollout, log-prob passes, selection,
update, checkpoint) in its traceback; a resume failure means the checkpoint does not reshard or
the train state is not restored."""

import json

import pytest
import torch

from distributed_helpers import assert_all_ranks, assert_close_all_ranks
from tiny_runs import char_tokenizer, tiny_overrides
from rlad_megatron.models import checkpoint as mckpt
from rlad_megatron.models.forward import forward_logprobs
from rlad_megatron.runtime import destroy_parallel
from rlad_megatron.config.run import load_config
from rlad_megatron.train.loop import train
from rlad_megatron.train.setup import setup


def _config(tmp, name, algorithm, *extra):
    tok = char_tokenizer(tmp)
    return load_config(None, tiny_overrides(tok, tmp / name, algorithm) + list(extra))


def _trained_weights(cfg, steps: bool = True) -> list:
    """Train the run of `cfg` to its end (steps=False: only set it up); the student's final
    parameters on this rank."""
    run = setup(cfg)
    if steps:
        train(cfg, run)
    weights = [p.detach().clone() for m in run.student.modules for p in m.parameters()]
    destroy_parallel()
    return weights


def _metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("layout", [["parallel.tensor=2"], ["parallel.pipeline=2"]],
                         ids=["tp2", "pp2"])
@pytest.mark.parametrize("algorithm", ["rlad", "grpo", "kdrl", "sft_distill", "sft"])
def test_each_algorithm_runs_end_to_end(shared_tmp_path, algorithm, layout):
    cfg = _config(shared_tmp_path, f"{algorithm}", algorithm, *layout)
    summary = train(cfg)
    destroy_parallel()
    assert_all_ranks(summary["last_step"] == 2 and not summary["preempted"], f"{summary}")
    loss_key = f"loss/{cfg.loss_name}"
    ok, detail = True, ""
    if torch.distributed.get_rank() == 0:
        run_dir = shared_tmp_path / algorithm
        steps = [m for m in _metrics(run_dir) if loss_key in m]
        ok = [m["step"] for m in steps] == [1, 2] and all(
            isinstance(m[loss_key], float) for m in steps)
        ok = ok and mckpt.latest_iteration(run_dir / "checkpoints") == 2
        ok = ok and (run_dir / "tensorboard").is_dir() and (run_dir / "config.yaml").is_file()
        detail = f"metrics steps {[m['step'] for m in steps]}"
        if algorithm in ("rlad", "kdrl"):
            ok = ok and all("teacher/logprob_mean" in m for m in steps)
    assert_all_ranks(ok, f"{algorithm} {layout}: {detail}")


def test_resume_a_tp2_checkpoint_at_tp1(shared_tmp_path):
    first = _config(shared_tmp_path, "resume", "rlad", "parallel.tensor=2")
    run = setup(first)
    train(first, run)
    tokens = torch.randint(0, 19, (2, 9), generator=torch.Generator().manual_seed(3))
    before = forward_logprobs(run.student, tokens, micro_batch_size=1)
    destroy_parallel()
    second = _config(shared_tmp_path, "resume", "rlad", "parallel.tensor=1", "train.steps=3")
    run2 = setup(second)
    assert_all_ranks(run2.state.step == 2 and run2.resumed_from is not None,
                     f"resumed at step {run2.state.step} from {run2.resumed_from}")
    after = forward_logprobs(run2.student, tokens, micro_batch_size=1)
    assert_close_all_ranks(after, before, rtol=1e-5, atol=1e-5,
                           what="student log-probs after resuming a TP=2 checkpoint at TP=1")
    summary = train(second, run2)
    destroy_parallel()
    assert_all_ranks(summary["start_step"] == 2 and summary["last_step"] == 3, f"{summary}")


def test_nan_loss_skips_the_step_and_aborts_after_k_in_a_row(shared_tmp_path):
    from rlad_megatron.data.batch import TrainBatch
    from rlad_megatron.train import phases

    cfg = _config(shared_tmp_path, "nan", "grpo", "parallel.tensor=2",
                  "train.max_consecutive_bad_steps=2")
    run = setup(cfg)
    tokens = torch.randint(0, 19, (16, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(16, 12, dtype=torch.bool)
    mask[:, 4:] = True
    advantages = torch.ones(16)
    advantages[3] = float("nan")
    zeros = torch.zeros(16, 12)
    batch = TrainBatch(tokens=tokens, prompt_lengths=torch.full((16,), 4),
                       response_lengths=torch.full((16,), 8), loss_mask=mask,
                       sampler_logprobs=zeros, group_ids=torch.arange(16) // 4,
                       rewards=advantages, advantages=advantages, old_logprobs=zeros)
    before = [p.detach().clone() for m in run.student.modules for p in m.parameters()]
    metrics = phases.update(run, batch, step=1, mini_batches=1)
    unchanged = all(torch.equal(a, p) for a, p in zip(
        before, (p for m in run.student.modules for p in m.parameters())))
    assert_all_ranks(metrics.get("optim/skipped") == 1.0 and unchanged and run.state.bad_steps == 1,
                     f"a NaN loss must skip the optimizer step: {metrics}")
    with pytest.raises(RuntimeError, match="2 consecutive optimizer steps with a NaN/Inf"):
        phases.update(run, batch, step=2, mini_batches=1)
    destroy_parallel()


def test_evaluation_is_the_same_at_dp2_and_tp2(shared_tmp_path):
    """Same weights, same eval.seed: DP=2 (each rank half of the prompts, records gathered) and
    TP=2 (one rank's worth of prompts, vocabulary split) draw the same samples for every prompt."""
    from rlad_megatron.train.evaluate import eval_items, evaluate

    out = {}
    for name, layout in (("dp2", "parallel.tensor=1"), ("tp2", "parallel.tensor=2")):
        cfg = _config(shared_tmp_path, f"eval_{name}", "grpo", layout, "eval.num_prompts=0",
                      "data.heldout_size=6", "data.reward=format")
        run = setup(cfg)
        metrics, _, records = evaluate(run, run.student, eval_items(run))
        out[name] = (metrics, records)
        destroy_parallel()
    (m_dp, r_dp), (m_tp, r_tp) = out["dp2"], out["tp2"]
    assert_all_ranks(len(r_dp) == 6 and [r["id"] for r in r_dp] == [r["id"] for r in r_tp],
                     f"prompt order {[r['id'] for r in r_dp]} vs {[r['id'] for r in r_tp]}")
    assert_all_ranks(r_dp == r_tp and m_dp == m_tp,
                     f"records differ between DP=2 and TP=2: {r_dp} vs {r_tp}")
    # a sampled evaluation of random weights: response lengths vary, so equal lengths mean equal
    # draws (not a vacuous match of all-zero rewards)
    assert_all_ranks(0 < m_dp["eval/response_len"] < 10, f"{m_dp}")


@pytest.mark.parametrize("layout", [["parallel.tensor=2"], ["parallel.pipeline=2"]],
                         ids=["tp2", "pp2"])
def test_rlad_with_teacher_trajectories_and_reference_kl_end_to_end(shared_tmp_path, layout):
    """The three-step reading (teacher trajectories, gates, joint loss) as an option of `rlad
    train`: the teacher generates 2 trajectories per prompt, the gates (switched off here, so
    every teacher row is imitated) select them, and the joint loss trains on both kinds of row,
    with the reference KL on."""
    name = f"traj_{layout[0].split('.')[1].split('=')[0]}"
    cfg = _config(shared_tmp_path, name, "rlad", *layout, "rollout.teacher_samples=2",
                  "imitation.gate_aligned=false", "imitation.gate_advantage=false",
                  "imitation.gate_explore=false", "imitation.weight=0.5",
                  "loss.trrd.kl_beta=0.05")
    summary = train(cfg)
    destroy_parallel()
    assert_all_ranks(summary["last_step"] == 2, f"{summary}")
    ok, detail = True, ""
    if torch.distributed.get_rank() == 0:
        steps = [m for m in _metrics(shared_tmp_path / name) if "loss/joint" in m]
        detail = f"{steps}"
        ok = [m["step"] for m in steps] == [1, 2] and all(
            m["distill/tokens"] > 0 and m["imitation/pass_selected"] == 1.0
            and 0 < m["joint/distill_share"] < 1 and "imitation/teacher_reward" in m
            and m["kl/ref_mean"] >= 0 and m["time/teacher_rollout_s"] > 0 for m in steps)
    assert_all_ranks(ok, f"teacher trajectories at {layout}: {detail}")


def test_reference_kl_is_zero_before_the_first_update_and_positive_after(shared_tmp_path):
    """pi_ref is the student's starting weights, swapped in from host memory: the reference pass
    equals the old-policy pass before any update, differs after one, and swapping it in and out
    leaves the student's weights bit-identical."""
    from rlad_megatron.data.micro_batches import fixed_plan
    from rlad_megatron.train import phases

    cfg = _config(shared_tmp_path, "refkl", "grpo", "parallel.tensor=2", "loss.grpo.kl_beta=0.1",
                  "train.mini_batches=1", "optimizer.lr=3e-2",
                  "seed=8")  # a seed whose first rollout has reward variance (a real update)
    run = setup(cfg)
    tokens = torch.randint(0, 19, (4, 12), generator=torch.Generator().manual_seed(1))
    params = lambda: [p.detach().clone() for m in run.student.modules for p in m.parameters()]  # noqa: E731
    before = params()
    plan = fixed_plan(4, 12, micro_batch_size=2)
    old = phases.logprobs(run, run.student, tokens, fused=False, plan=plan)
    ref = phases.reference_logprobs(run, tokens, plan)
    same = all(torch.equal(a, b) for a, b in zip(before, params()))
    assert_all_ranks(torch.equal(ref, old) and same, "reference pass before any update")
    train(cfg, run)
    after = phases.logprobs(run, run.student, tokens, fused=False, plan=plan)
    ref_after = phases.reference_logprobs(run, tokens, plan)
    destroy_parallel()
    assert_all_ranks(torch.equal(ref_after, ref) and not torch.allclose(after, ref, atol=1e-4),
                     "the reference stays the starting model while the student moves")
    ok, detail = True, ""
    if torch.distributed.get_rank() == 0:
        kl = [m["kl/ref_mean"] for m in _metrics(shared_tmp_path / "refkl") if "kl/ref_mean" in m]
        detail = f"kl/ref_mean per step {kl}"
        ok = len(kl) == 2 and abs(kl[0]) < 1e-9 and kl[1] > 1e-7
    assert_all_ranks(ok, detail)


@pytest.mark.parametrize("layout", [["parallel.tensor=2"], ["parallel.pipeline=2"]],
                         ids=["tp2", "pp2"])
def test_streamed_teacher_trains_exactly_like_the_resident_one(shared_tmp_path, layout):
    """teacher.offload=stream (decoder layers in host memory, scored layer-major) gives the same
    run, bit for bit on CPU, as the resident teacher: every logged loss, teacher and TRRD
    statistic and the final student weights; and it logs its memory and copy time. Bit for bit
    holds on any CPU, Adam included: streaming changes the order in which layers visit the
    micro-batches, not the kernels or shapes of any one product, so both runs round alike."""
    students = {offload: _trained_weights(_config(
        shared_tmp_path, f"offload_{offload}_{layout[0]}", "rlad", *layout,
        f"teacher.offload={offload}", "eval.teacher=false",
        *(["teacher.stream_window=1"] if offload == "stream" else [])))
        for offload in ("none", "stream")}
    same = all(torch.equal(a, b) for a, b in zip(students["none"], students["stream"]))
    assert_all_ranks(same, "final student weights differ between resident and streamed teacher")
    ok, detail = True, ""
    if torch.distributed.get_rank() == 0:
        runs = {o: [m for m in _metrics(shared_tmp_path / f"offload_{o}_{layout[0]}")
                    if "loss/trrd" in m] for o in ("none", "stream")}
        keys = [k for k in runs["none"][0] if k.split("/")[0] in ("loss", "trrd", "teacher")]
        diffs = [(m["step"], k) for m, n in zip(runs["stream"], runs["none"]) for k in keys
                 if m[k] != n[k]]
        ok = not diffs and len(runs["stream"]) == 2 and all(
            m["teacher/resident_mib"] > 0 and m["teacher/host_mib"] > 0 and
            "time/teacher_transfer_s" in m for m in runs["stream"])
        detail = f"differing (step, key): {diffs[:5]}; keys {keys[:8]}"
    assert_all_ranks(ok, detail)


# Why SGD and these bounds. Token budgets cut the rows into other micro-batches than the fixed
# plan, so fp32 sums run in another order and the two runs' gradients differ by round-off (about
# 1e-7 relative). Adam divides each step by the gradient's root mean square, so on a weight whose
# gradient is near zero that round-off becomes a move of up to lr: with Adam at lr 3e-3 the final
# weights of two correct runs differed by 1e-5..2e-4 depending on the CPU's kernels, and no bound
# on them follows from the arithmetic. With SGD a weight moves by lr x its gradient, so two
# correct runs end within lr x steps x (gradient round-off) of each other, which is below the
# weights' own last bits: measured 1e-7..4e-7 (1-3 ulp of weights ~1), i.e. 4e-6..7e-6 of the
# distance the weights moved (0.02-0.08) at DP=2, TP=2 and PP=2. REL_WEIGHT_BOUND sits ~15x above
# that and ~1e4x below a real bug: one dropped token per micro-batch (planted in the budget plan's
# widths) moved the final weights by 0.4-1.2x the whole distance they moved.
SGD = ["optimizer.name=sgd", "optimizer.lr=0.5"]
REL_WEIGHT_BOUND = 1e-4
"""max |w_budget - w_plain| / max |w_plain - w_start|: fp32 round-off through SGD steps."""


@pytest.mark.parametrize("layout", [[], ["parallel.tensor=2"], ["parallel.pipeline=2"]],
                         ids=["dp2", "tp2", "pp2"])
def test_token_budgets_and_teacher_scoring_during_rollout_train_like_the_plain_run(
        shared_tmp_path, layout):
    """train.max_tokens_per_micro_batch (length-sorted micro-batches trimmed to their longest
    row) with teacher.score_during_rollout (the teacher scores each generation micro-batch as it
    finishes) runs the same RLAD training as fixed micro-batches scored after the rollout: the
    same rollouts (response lengths and rewards equal at every step), teacher statistics and
    losses within fp32 round-off, final weights within REL_WEIGHT_BOUND of the distance they
    moved (SGD: see above), and it logs how much of each pass was real tokens (both with the
    static engine). The continuous rollout engine, the default (3 rows in flight, KV blocks of 8
    tokens; the teacher scores each group as it stops), samples the same tokens, so it trains
    alike too."""
    name = layout[0].split("=")[0].split(".")[1] if layout else "dp"
    during = ["train.max_tokens_per_micro_batch=40", "teacher.score_during_rollout=true"]
    static = "rollout.engine=static"
    variants = {"plain": [static], "budget": [*during, "rollout.micro_batch_size=4", static],
                "continuous": [*during, "rollout.engine=continuous", "rollout.max_live_rows=3",
                               "rollout.kv_block_size=8"]}
    start = _trained_weights(_config(shared_tmp_path, f"budget_start_{name}", "rlad", *layout,
                                     *SGD, "eval.teacher=false"), steps=False)
    students = {variant: _trained_weights(_config(
        shared_tmp_path, f"budget_{variant}_{name}", "rlad", *layout, *extra, *SGD,
        "eval.teacher=false")) for variant, extra in variants.items()}
    moved = max((p - s).abs().max().item() for p, s in zip(students["plain"], start))
    for variant in ("budget", "continuous"):
        diff = max((a - b).abs().max().item() for a, b in zip(students["plain"],
                                                               students[variant]))
        assert_all_ranks(moved > 1e-3 and diff <= REL_WEIGHT_BOUND * moved,
                         f"final student weights: {variant} vs plain differ by {diff:.3e}, the "
                         f"weights moved {moved:.3e} (bound {REL_WEIGHT_BOUND} of it)")
    ok, detail = True, ""
    if torch.distributed.get_rank() == 0:
        runs = {v: [m for m in _metrics(shared_tmp_path / f"budget_{v}_{name}")
                    if "loss/trrd" in m] for v in variants}
        exact = ("rollout/reward_mean", "rollout/response_len")
        keys = [k for k in runs["plain"][0] if k.split("/")[0] in ("loss", "trrd", "teacher")]
        for variant in ("budget", "continuous"):
            pairs = list(zip(runs[variant], runs["plain"]))
            diffs = [(m["step"], k, m[k], n[k]) for m, n in pairs
                     for k in keys if abs(m[k] - n[k]) > 1e-4 * max(1.0, abs(n[k]))]
            diffs += [(m["step"], k, m[k], n[k]) for m, n in pairs for k in exact if m[k] != n[k]]
            fracs = [(m["throughput/useful_token_frac_logprobs"],
                      n["throughput/useful_token_frac_logprobs"],
                      m["throughput/useful_token_frac_update"],
                      m["throughput/useful_token_frac_teacher"]) for m, n in pairs]
            ok &= not diffs and len(runs[variant]) == 2 and all(
                0 < plain <= budget <= 1 and 0 < update <= 1 and 0 < teacher <= 1
                for budget, plain, update, teacher in fracs) and all(
                m["time/teacher_during_rollout_s"] > 0 for m in runs[variant])
            detail += f"{variant}: differing (step, key, it, plain): {diffs[:5]}; fractions {fracs}. "
    assert_all_ranks(ok, detail)


@pytest.mark.parametrize("layout", [[], ["parallel.tensor=2"], ["parallel.pipeline=2"]],
                         ids=["dp2", "tp2", "pp2"])
def test_on_policy_step_skips_the_old_logprob_pass_with_the_same_losses(shared_tmp_path, layout):
    """train.mini_batches=1 (one on-policy optimizer step per RL step): train.old_logprobs=auto
    skips the old-policy pass (no time/old_logprobs_s, train/old_logprobs_pass 0) and its first
    step logs, bit for bit on CPU, the rollout, losses, TRRD and teacher statistics, reference KL
    and grad norm of train.old_logprobs=pass (same rollout, same weights: one step's losses and
    gradients, compared before any optimizer step could amplify round-off)."""
    name = layout[0].split("=")[0].split(".")[1] if layout else "dp"
    common = ["train.mini_batches=1", "train.steps=1", "eval.at_start=false",
              "eval.teacher=false", "loss.trrd.kl_beta=0.1"]
    for mode in ("pass", "auto"):
        train(_config(shared_tmp_path, f"onpolicy_{mode}_{name}", "rlad", *layout, *common,
                      f"train.old_logprobs={mode}"))
        destroy_parallel()
    ok, detail = True, ""
    if torch.distributed.get_rank() == 0:
        runs = {m: [r for r in _metrics(shared_tmp_path / f"onpolicy_{m}_{name}")
                    if "loss/trrd" in r][0] for m in ("pass", "auto")}
        keys = [k for k in runs["pass"] if k.split("/")[0] in
                ("loss", "trrd", "teacher", "kl", "rollout", "count", "policy")] + [
                "optim/grad_norm"]
        diffs = [(k, runs["auto"].get(k), runs["pass"][k]) for k in keys
                 if runs["auto"].get(k) != runs["pass"][k]]
        ok = (not diffs and len(keys) > 10 and runs["pass"]["train/old_logprobs_pass"] == 1.0
              and runs["auto"]["train/old_logprobs_pass"] == 0.0
              and "time/old_logprobs_s" in runs["pass"]
              and "time/old_logprobs_s" not in runs["auto"])
        detail = f"differing (key, auto, pass): {diffs[:5]}; keys {keys}"
    assert_all_ranks(ok, detail)
