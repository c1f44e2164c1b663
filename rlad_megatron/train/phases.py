"""The phases of one RLAD step, each a function of the Run and the batch (train/loop.py calls
them in the order of the paper's algorithm box).

Data parallelism: every rank draws the same prompts; DP rank r takes the r-th contiguous slice,
generates G samples of each (rollout/), scores and normalises them within their group (groups
never cross ranks), and computes the old-policy and teacher log-probs of its own rows. The
log-prob passes leave their [b, s] result on the last pipeline stage; it is broadcast over the
pipeline group so that every stage holds the complete TrainBatch.

Where the tensors live: on the compute device, from the rollout to the update (rollout/generate.py
returns its batch there; the log-prob passes, the pipeline broadcast, rewards, advantages and
selection stay there). The host reads, per step: the response token ids once, to decode them
for the reward (a Python function of text); the [b] row lengths for micro-batch planning; and
the metrics at the step's end. No [b, s] log-prob or [b, V] logit tensor crosses
(tests/unit/train/test_fake_device_step.py runs these phases on a fake CUDA device).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Optional

import torch

from rlad_megatron.data.advantages import with_teacher_rows
from rlad_megatron.data.batch import RolloutBatch, RowBatch, TrainBatch, interleave_groups
from rlad_megatron.data.micro_batches import MicroBatchPlan, row_lengths
from rlad_megatron.data.selection import gate_trajectories, select_teacher_tokens
from rlad_megatron.data.tasks import PromptItem
from rlad_megatron.models.forward import forward_logprobs
from rlad_megatron.rollout import GenerationConfig, generate
from rlad_megatron.rollout.on_layout import generate_on_layout
from rlad_megatron.runtime import devices
from rlad_megatron.runtime.devices import compute_device
from rlad_megatron.train.generation import completions, generation_config, prompt_ids
from rlad_megatron.train.run import Run
from rlad_megatron.train.step import (forward_backward, grads_finite, micro_batch_plan,
                                      optimizer_step)


log = logging.getLogger("rlad_megatron.train")


def dp_shard(run: Run, items: list) -> list:
    n = len(items) // run.par.dp
    return items[run.par.dp_rank * n:(run.par.dp_rank + 1) * n]


def rollout(run: Run, items: list[PromptItem], step: int, model=None,
            on_micro_batch=None) -> RolloutBatch:
    """G samples per prompt of this DP rank from the student (or `model`); on_micro_batch is
    rollout.generate's hook (train/teacher_scoring.py DuringRollout)."""
    return generate(model or run.student, prompt_ids(run, items), generation_config(run),
                    seed=run.cfg.seed * 1_000_003 + step, on_micro_batch=on_micro_batch)


def micro_batches(run: Run, batch: RolloutBatch) -> MicroBatchPlan:
    """This rank's micro-batches of `batch` for a log-prob pass or an update: fixed, or token
    budgets agreed over DP (train.max_tokens_per_micro_batch; train/step.py micro_batch_plan)."""
    t = run.cfg.train
    return micro_batch_plan(run.par, row_lengths(batch.prompt_lengths, batch.response_lengths),
                            batch.seq_len, micro_batch_size=t.micro_batch_size,
                            max_tokens=t.max_tokens_per_micro_batch)


def useful_token_frac(run: Run, pairs: list[tuple[MicroBatchPlan, RolloutBatch]]) -> float:
    """Real tokens / processed tokens of a pass over all DP ranks (pairs: each plan and the batch
    it cut)."""
    t = torch.tensor([[float(row_lengths(b.prompt_lengths, b.response_lengths).sum()),
                       float(p.processed_tokens())] for p, b in pairs],
                     dtype=torch.float64).sum(0)
    devices.all_reduce(t, group=run.par.dp_group)
    return float(t[0] / t[1].clamp(min=1))


def teacher_generate(run: Run, prompts: list[list[int]], gen: GenerationConfig, *,
                     seed: int) -> RolloutBatch:
    """The teacher's samples of this DP rank's prompts (teacher trajectories, sft_distill's
    traces); a teacher on its own layout (teacher.parallel) generates them for every DP rank."""
    if run.teacher.par.detached:
        return generate_on_layout(run.teacher, run.par, prompts, gen, seed=seed)
    return generate(run.teacher, prompts, gen, seed=seed)


TEACHER_SEED_OFFSET = 500_000_009
"""Teacher trajectories draw their own noise stream (seed offset), never the student's."""


def with_teacher_trajectories(run: Run, items: list[PromptItem], step: int,
                              student: RolloutBatch) -> tuple[RolloutBatch, torch.Tensor]:
    """rollout.teacher_samples trajectories per prompt from the teacher (same sampler, KV cache,
    temperature and lengths as the student's rollout), interleaved after each prompt's G student
    rows. Returns the batch and teacher_rows [b] bool."""
    r = run.cfg.rollout
    gen = generation_config(run, samples=r.teacher_samples)
    teacher = teacher_generate(run, prompt_ids(run, items), gen,
                               seed=run.cfg.seed * 1_000_003 + step + TEACHER_SEED_OFFSET)
    return interleave_groups(student, teacher, group_size=r.group_size,
                             teacher_samples=r.teacher_samples,
                             pad_token_id=run.tokenizer.pad_id or 0)


def score(run: Run, batch: RolloutBatch,
          items: list[PromptItem]) -> tuple[torch.Tensor, list[str]]:
    """[b] rewards of this rank's rows (row i answers items[i // G])."""
    group = batch.batch_size // len(items)
    texts = completions(run, batch)
    rows = [items[i // group] for i in range(len(texts))]
    rewards = [run.reward_fn(run.fmt.to_reward_text(text, item), item)
               for text, item in zip(texts, rows)]
    return torch.tensor(rewards, dtype=torch.float32, device=batch.tokens.device), texts


def advantages(run: Run, rewards: torch.Tensor, batch: RolloutBatch,
               teacher_rows: Optional[torch.Tensor] = None):
    """[b] group-normalised advantages and the RL loss mask (zero-variance groups masked out when
    advantage.drop_zero_variance: the rows stay, so every rank keeps its shape). Teacher rows get
    their advantage by imitation.advantage and are left out of the RL loss mask."""
    a = run.cfg.advantage
    rows = (torch.zeros(batch.batch_size, dtype=torch.bool, device=rewards.device)
            if teacher_rows is None else teacher_rows)
    adv, keep = with_teacher_rows(a.estimator, rewards, batch.group_ids, rows,
                                  mode=run.cfg.imitation.advantage, eps=a.eps,
                                  drop_zero_variance=a.drop_zero_variance)
    return adv, batch.loss_mask & (keep & ~rows)[:, None]


def pp_broadcast(run: Run, value: Optional[torch.Tensor], shape) -> torch.Tensor:
    """A [b, s] float32 result of the last pipeline stage (value; None elsewhere) on every
    stage."""
    par = run.par
    if par.pp == 1:
        return value
    out = value if par.is_last_stage else torch.empty(shape, dtype=torch.float32,
                                                      device=compute_device())
    out = out.contiguous()
    devices.broadcast(out, src=par.last_stage_global_rank, group=par.pp_group)
    return out


def logprobs(run: Run, model, tokens: torch.Tensor, *, fused: bool,
             plan: MicroBatchPlan) -> torch.Tensor:
    """[b, s] log-probs of `tokens` under `model`, a model on the student's layout (the student,
    or its reference weights swapped in), at the rollout temperature, on every stage, over the
    micro-batches of `plan` (micro_batches). The teacher's passes: train/teacher_scoring.py."""
    lp = forward_logprobs(model, tokens, plan=plan, temperature=run.cfg.rollout.temperature,
                          fused=fused)
    return pp_broadcast(run, lp, tuple(tokens.shape))


def reference_logprobs(run: Run, tokens: torch.Tensor,
                       plan: MicroBatchPlan) -> Optional[torch.Tensor]:
    """[b, s] log-probs under pi_ref (the student's starting weights, swapped in from host
    memory; models/reference.py), or None when the loss has no reference KL."""
    if run.reference is None:
        return None
    with run.reference.swapped_into(run.student):
        return logprobs(run, run.student, tokens, fused=False, plan=plan)


def select(run: Run, batch: TrainBatch, response_mask: torch.Tensor) -> TrainBatch:
    """The paper's teacher mask on the student's rows and, with teacher trajectories, the three
    gates on the teacher's rows (response_mask [b, s]: every row's response tokens)."""
    s = run.cfg.selection
    if batch.teacher_logprobs is None:
        return batch
    selection = select_teacher_tokens(batch.advantages, batch.old_logprobs,
                                      batch.teacher_logprobs, batch.loss_mask, policy=s.policy,
                                      tau_adv=s.tau_adv, tau_align=s.tau_align)
    batch = batch.with_selection(selection)
    if batch.teacher_rows is None:
        return batch
    im = run.cfg.imitation
    gates = gate_trajectories(
        teacher_rows=batch.teacher_rows, group_ids=batch.group_ids, rewards=batch.rewards,
        advantages=batch.advantages, old_logprobs=batch.old_logprobs,
        teacher_logprobs=batch.teacher_logprobs, response_mask=response_mask,
        align_metric=im.align_metric, tau_align=im.tau_align, tau_adv=im.tau_adv,
        tau_success=im.tau_success, success_reward=im.success_reward,
        use_aligned=im.gate_aligned, use_advantage=im.gate_advantage,
        use_explore=im.gate_explore)
    return dataclasses.replace(batch, gates=gates,
                               distill_mask=response_mask.bool() & gates.selected[:, None])


def imitation_metrics(run: Run, batch: TrainBatch) -> dict[str, float]:
    """Teacher-row reward, each gate's pass rate and the aligned gate's mean metric (this rank's
    rows; dp_mean them: every rank holds the same number of teacher rows)."""
    g = batch.gates
    rows = g.teacher_rows
    out = {f"imitation/pass_{k}": v for k, v in g.pass_rates().items()}
    out["imitation/teacher_reward"] = float(batch.rewards[rows].mean())
    out["imitation/alignment_mean"] = float(g.alignment[rows].mean())
    out["imitation/teacher_advantage"] = float(batch.advantages[rows].mean())
    return out


def update(run: Run, batch: RowBatch, step: int, mini_batches: int) -> dict[str, float]:
    """One optimizer step per mini-batch; a NaN/Inf loss or gradient skips the step (logged),
    and max_consecutive_bad_steps of them in a row abort the run. The loss is the run's at
    `step` (RunConfig.loss_for: the algorithm's, or "joint" with teacher trajectories)."""
    loss = run.cfg.loss_for(step)
    size = batch.batch_size // mini_batches
    merged: dict[str, list[float]] = {}
    pairs = []
    for mini in batch.split(size):
        plan = micro_batches(run, mini)
        pairs.append((plan, mini))
        metrics = forward_backward(run.student, mini, loss, plan=plan,
                                   temperature=run.cfg.rollout.temperature)
        finite = math.isfinite(metrics.get(f"loss/{loss.name}", 0.0)) and grads_finite(run.student)
        if finite:
            metrics.update(optimizer_step(run.student))
            run.scheduler.step(increment=1)
            run.state.bad_steps = 0
        else:
            run.state.bad_steps += 1
            log.warning("step %d: NaN/Inf loss or gradient, optimizer step skipped (%d in a row)",
                        step, run.state.bad_steps)
            metrics["optim/skipped"] = 1.0
            if run.state.bad_steps >= run.cfg.train.max_consecutive_bad_steps:
                raise RuntimeError(
                    f"aborting at step {step}: {run.state.bad_steps} consecutive optimizer steps "
                    "with a NaN/Inf loss or gradient (train.max_consecutive_bad_steps)")
        for key, value in metrics.items():
            merged.setdefault(key, []).append(value)
    out = {k: sum(v) / len(v) for k, v in merged.items()}
    out["throughput/useful_token_frac_update"] = useful_token_frac(run, pairs)
    out["optim/lr"] = float(run.student.optimizer.param_groups[0]["lr"])
    return out


def dp_mean(run: Run, values: dict[str, float]) -> dict[str, float]:
    """Mean of per-rank scalars over the data-parallel group (equal-sized ranks)."""
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    devices.all_reduce(t, group=run.par.dp_group)
    return {k: v / run.par.dp for k, v in zip(keys, t.tolist())}
