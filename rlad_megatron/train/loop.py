"""The RLAD loop: the paper's algorithm box, one call per stage.

    for each step:
        prompts   <- sampler                                   data/sampler.py
        rollout   <- G student samples per prompt              rollout/ (KV cache, TP/PP)
       [+ K teacher trajectories per prompt                    rollout.teacher_samples]
        rewards   <- verifiable reward of each sample          data/rewards.py
        A         <- GRPO group normalisation                  data/advantages.py
        lp_old    <- student forward-only pass                 models/forward.py
                     [or the update's own forward, on-policy   config/on_policy.py]
       [lp_ref    <- student pass with pi_ref swapped in       models/reference.py, kl_beta > 0]
        lp_T      <- teacher forward-only pass (fused)         models/forward.py
        mask_T    <- selective imitation                       data/selection.py
                     [+ the three gates on teacher rows]
        update    <- TRRD (or GRPO/KDRL) loss, optimizer steps train/step.py, losses/
                     [+ lambda * distillation on selected teacher rows: losses/joint.py]
        log, checkpoint, preemption check

`algorithm` picks the loss (config/run.py ALGORITHMS) and, for sft / sft_distill, the
supervised data path (gold solutions / rejection-sampled teacher traces). Evaluation on the
held-out split runs before training, every eval.every steps, and at the end.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Optional

from rlad_megatron.bookkeeping.checkpoint import save_train_checkpoint
from rlad_megatron.bookkeeping.plots import plot_run
from rlad_megatron.bookkeeping.preemption import PreemptionHandler, write_preemption_marker
from rlad_megatron.bookkeeping.timers import memory_stats, progress, throughput
from rlad_megatron.config.on_policy import reuses_update_forward
from rlad_megatron.config.run import RunConfig
from rlad_megatron.data.batch import TrainBatch
from rlad_megatron.data.sft_batch import SFTBatch
from rlad_megatron.runtime import print0
from rlad_megatron.train import phases
from rlad_megatron.train.generation import generation_config, prompt_ids
from rlad_megatron.train.evaluate import eval_items, evaluate, write_eval_records
from rlad_megatron.train.rl_metrics import rl_step_metrics
from rlad_megatron.train.run import Run
from rlad_megatron.train.setup import setup
from rlad_megatron.train.teacher_scoring import teacher_guard

log = logging.getLogger("rlad_megatron.train")


@dataclasses.dataclass
class StepResult:
    """What one step reports: scalar metrics and, for RL, one decoded rollout to log as text."""

    metrics: dict[str, float]
    sample: Optional[str] = None


def rl_step(run: Run, step: int) -> StepResult:
    cfg, timer = run.cfg, run.timer
    teacher_rows, ref, passes = None, None, {}
    scoring = run.scorer.begin_step()  # the teacher's passes (train/teacher_scoring.py)
    with timer.phase("rollout"):
        items = phases.dp_shard(run, run.sampler.next(cfg.rollout.prompts_per_step))
        rollout = phases.rollout(run, items, step, on_micro_batch=scoring.hook)
    if cfg.uses_trajectories:
        with timer.phase("teacher_rollout"):
            rollout, teacher_rows = phases.with_teacher_trajectories(run, items, step, rollout)
    with timer.phase("reward"):
        rewards, texts = phases.score(run, rollout, items)
        advantages, loss_mask = phases.advantages(run, rewards, rollout, teacher_rows)
    plan = phases.micro_batches(run, rollout)  # the log-prob passes' micro-batches
    frac = phases.useful_token_frac(run, [(plan, rollout)])
    passes["throughput/useful_token_frac_logprobs"] = frac
    old = None  # on-policy: the update's own forward gives lp_old (config/on_policy.py)
    if not reuses_update_forward(cfg):
        with timer.phase("old_logprobs"):
            old = phases.logprobs(run, run.student, rollout.tokens, fused=False, plan=plan)
    if run.reference is not None:
        with timer.phase("ref_logprobs"):
            ref = phases.reference_logprobs(run, rollout.tokens, plan)
    teacher, teacher_metrics = scoring.finish(rollout, plan, frac)
    passes.update(teacher_metrics)
    batch = phases.select(run, TrainBatch.from_rollout(
        dataclasses.replace(rollout, loss_mask=loss_mask), rewards=rewards,
        advantages=advantages, old_logprobs=old, teacher_logprobs=teacher,
        ref_logprobs=ref, teacher_rows=teacher_rows),
        rollout.loss_mask)
    with timer.phase("update"):
        update = phases.update(run, batch, step, cfg.train.mini_batches)
    passes["train/old_logprobs_pass"] = float(old is not None)
    metrics = rl_step_metrics(run, rollout, rewards, loss_mask, batch, teacher_rows, update,
                              passes)
    warning = run.reward_watch.update(metrics["rollout/reward_all_zero"],
                                      metrics["rollout/reward_all_one"], cfg)
    if warning:
        print0(f"WARNING rlad: step {step}: {warning}", file=sys.stderr)
    return StepResult(metrics, texts[0] if texts else "")


def sft_step(run: Run, step: int) -> StepResult:
    cfg, timer = run.cfg, run.timer
    tok = run.tokenizer
    items = phases.dp_shard(run, run.sampler.next(cfg.train.sft_batch_size))
    prompts = prompt_ids(run, items)
    keep = None
    with timer.phase("rollout"):
        if cfg.algorithm == "sft":
            targets = [tok.encode(run.fmt.solution(item)) for item in items]
        else:  # sft_distill: one teacher trace per prompt, kept when its reward is 1
            gen = generation_config(run, samples=1)
            traces = phases.teacher_generate(run, prompts, gen, seed=cfg.seed * 1_000_003 + step)
            # the teacher's own log-probs of its samples: NaN/Inf or uniform (weights not
            # loaded) stops the run, as the teacher pass does under rlad/kdrl
            teacher_guard(run, traces.sampler_logprobs, traces.loss_mask)
            rewards, texts = phases.score(run, traces, items)
            keep = (rewards >= 1.0).tolist()
            targets = [tok.encode(t) for t in texts]
    batch = SFTBatch.build(prompts, targets, eos_id=tok.eos_id, pad_id=tok.pad_id or 0,
                           keep=keep)
    with timer.phase("update"):
        metrics = phases.update(run, batch, step, 1)
    metrics.update(phases.dp_mean(run, {"throughput/tokens": float(batch.tokens.numel()),
                                        "sft/kept_frac": 1.0 if keep is None else
                                        sum(keep) / len(keep)}))
    return StepResult(metrics)


def run_eval(run: Run, step: int, *, teacher: bool = False) -> dict[str, float]:
    """Evaluate the student (and, with teacher=True, the teacher) at the eval.* protocol; log
    the metrics and write the per-prompt records to RUN_DIR/eval/step_XXXXXXX.json."""
    items = eval_items(run)
    out, sample, records = evaluate(run, run.student, items)
    saved = {"student": records}
    if teacher and run.teacher is not None:
        t, _, saved["teacher"] = evaluate(run, run.teacher, items, prefix="eval_teacher")
        out.update(t)
    run.metrics.log(step, out)
    run.metrics.log_text(step, "eval/sample", sample)
    if run.cfg.eval.save_samples and run.is_logging_rank:
        write_eval_records(run.cfg, step, saved)
    return out


def eval_due(cfg: RunConfig, step: int) -> bool:
    """A scheduled evaluation after `step` (the last step's is the final evaluation)."""
    return bool(cfg.eval.every) and step % cfg.eval.every == 0 and step != cfg.train.steps


def pending_eval(cfg: RunConfig, run: Run) -> bool:
    """Resumed at a step whose scheduled evaluation a preemption skipped (no record of it)."""
    step = run.state.step
    record = Path(cfg.run_dir) / "eval" / f"step_{step:07d}.json"
    return run.resumed_from is not None and eval_due(cfg, step) and not record.exists()


def checkpoint(run: Run) -> None:
    run.state.data = run.sampler.state_dict()
    save_train_checkpoint(run.cfg.checkpoint_dir, run.student, run.scheduler, run.state,
                          keep_last=run.cfg.checkpoint.keep_last, config_yaml=run.config_yaml)


def write_summary(run_dir: str, summary: dict) -> None:
    """RUN_DIR/summary.json (atomic): written once a run has finished all its steps."""
    path = Path(run_dir) / "summary.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, indent=1, default=str))
    os.replace(tmp, path)


def train(cfg: RunConfig, run: Optional[Run] = None) -> dict:
    """Run (or resume) training; returns a summary (eval before/after, plot path, last step)."""
    run = run or setup(cfg)
    try:
        return _train(cfg, run)
    finally:
        if run.lock is not None:
            run.lock.release()


def _train(cfg: RunConfig, run: Run) -> dict:
    step_fn = rl_step if cfg.is_rl else sft_step
    summary: dict = {"start_step": run.state.step}
    if run.state.step == 0 and cfg.eval.at_start:
        summary["before"] = run_eval(run, 0, teacher=cfg.eval.teacher)
    elif pending_eval(cfg, run):  # preempted at an evaluation step: evaluate it now
        run_eval(run, run.state.step)
    preempt = PreemptionHandler()
    steps = range(run.state.step + 1, cfg.train.steps + 1)
    bar = progress(steps, desc=cfg.algorithm, enabled=cfg.logging.progress and run.env.rank == 0)
    preempted = False
    with preempt:
        for step in bar:
            t0 = time.perf_counter()
            result = step_fn(run, step)
            run.state.step = step
            metrics, sample = result.metrics, result.sample
            seconds = time.perf_counter() - t0
            metrics.update(run.timer.pop())
            metrics["throughput/tokens_per_s"] = throughput(metrics.pop("throughput/tokens") *
                                                            run.par.dp, seconds)
            metrics.update(memory_stats())
            if step % cfg.logging.log_every == 0 or step == cfg.train.steps:
                run.metrics.log(step, metrics)
                if sample is not None:
                    run.metrics.log_text(step, "rollout/sample", sample)
            # refresh=False: shown at the bar's next redraw, which follows its mininterval
            bar.set_postfix({k.split("/")[1]: f"{v:.3g}" for k, v in metrics.items()
                             if k in ("rollout/reward_mean", f"loss/{cfg.loss_name}")},
                            refresh=False)
            # once the signal is here the checkpoint comes first: a scheduled evaluation at this
            # step would eat the grace period (it runs after the resume instead, pending_eval)
            if preempt.stop_agreed():
                checkpoint(run)
                write_preemption_marker(step, cfg.checkpoint_dir)
                print0(f"rlad: preempted; checkpoint at step {step} in {cfg.checkpoint_dir}")
                preempted = True
                break
            if eval_due(cfg, step):
                run_eval(run, step)  # logged under eval/ by run_eval
            if cfg.checkpoint.save_every and step % cfg.checkpoint.save_every == 0 and \
                    step != cfg.train.steps:
                checkpoint(run)
    if not preempted:
        if run.state.step > summary["start_step"] or run.state.step == 0:
            checkpoint(run)
        summary["after"] = run_eval(run, run.state.step, teacher=False)
        if run.is_logging_rank:
            summary["plot"] = str(plot_run(cfg.run_dir))
            write_summary(cfg.run_dir, {**summary, "last_step": run.state.step})
    run.metrics.close()
    summary.update(last_step=run.state.step, preempted=preempted)
    return summary
