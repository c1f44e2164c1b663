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
from rlad_megatron.train.config import load_config
from rlad_megatron.train.loop import train
from rlad_megatron.train.setup import setup


def _config(tmp, name, algorithm, *extra):
    tok = char_tokenizer(tmp)
    return load_config(None, tiny_overrides(tok, tmp / name, algorithm) + list(extra))


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
