"""The teacher's log-probs of a step's rollout: one `TeacherScorer` per way the teacher is held,
chosen once in setup (`teacher_scorer`), so that rl_step (train/loop.py) asks every teacher the
same two things and has no branch per teacher mode:

    scoring = run.scorer.begin_step()                        # once per step
    rollout = phases.rollout(..., on_micro_batch=scoring.hook)
    teacher_lp, metrics = scoring.finish(rollout, plan, frac)  # [b, s] on every stage, or None

The scorers (how a [b, s] pass over tokens is computed):
  NoTeacher       grpo, or sft: no teacher, no log-probs (None).
  Resident        the teacher's chunks on the student's layout (models/forward.py).
  Streamed        teacher.offload=stream: the teacher's layers in host memory, scored
                  layer-major (models/teacher_stream.py); reports its bytes and copy time.
  OwnLayout       teacher.parallel: the teacher on its own TP x PP x DP groups
                  (models/teacher_layout.py); its result is on every stage already.
and when the pass happens: after the rollout (`AfterRollout`, timed as the teacher_logprobs
phase), or with teacher.score_during_rollout while it runs (`DuringRollout`: each generation
micro-batch, or each finished group of the continuous engine, scored as soon as it is complete;
on a GPU on a second CUDA stream).
Each result is checked (`teacher_guard`) before it reaches the loss.
"""

from __future__ import annotations

import contextlib
import time
from typing import Optional

import torch
from torch import Tensor

from rlad_megatron.data.batch import RolloutBatch
from rlad_megatron.data.micro_batches import MicroBatchPlan
from rlad_megatron.losses import check_teacher_logprobs
from rlad_megatron.models.forward import forward_logprobs
from rlad_megatron.models.teacher_layout import layout_logprobs
from rlad_megatron.models.teacher_stream import StreamedTeacher, stream_metrics, streamed_logprobs
from rlad_megatron.runtime import agree_or_raise
from rlad_megatron.runtime.devices import compute_device
from rlad_megatron.train.phases import micro_batches, pp_broadcast, useful_token_frac

FRAC = "throughput/useful_token_frac_teacher"


class TeacherScorer:
    """A teacher's [b, s] log-probs of token rows at the rollout temperature (module docstring).
    `local` leaves them on the student's last pipeline stage (or every stage); `score` puts them
    on every stage."""

    on_every_stage = False
    """local()'s result is on every pipeline stage already (no broadcast needed)."""

    def __init__(self, run):
        self.run = run
        self.teacher = run.teacher

    def local(self, tokens: Tensor, plan: MicroBatchPlan) -> Tensor:
        raise NotImplementedError

    def score(self, tokens: Tensor, plan: MicroBatchPlan) -> Tensor:
        lp = self.local(tokens, plan)
        return lp if self.on_every_stage else pp_broadcast(self.run, lp, tuple(tokens.shape))

    def metrics(self) -> dict[str, float]:
        """This step's own metrics of the teacher (e.g. a streamed teacher's bytes moved)."""
        return {}

    def guard(self, teacher_lp: Tensor, loss_mask: Tensor) -> None:
        """Every rank raises (naming the checkpoint) when the teacher's log-probs cannot be
        right: NaN, +inf or above 0 on loss tokens (losses/diagnostics.py)."""
        teacher_guard(self.run, teacher_lp, loss_mask)

    def begin_step(self):
        """The step's scoring: during the rollout (teacher.score_during_rollout) or after it."""
        if self.run.cfg.teacher.score_during_rollout:
            return DuringRollout(self)
        return AfterRollout(self)


class Resident(TeacherScorer):
    def local(self, tokens: Tensor, plan: MicroBatchPlan) -> Tensor:
        return forward_logprobs(self.teacher, tokens, plan=plan, fused=True,
                                temperature=self.run.cfg.rollout.temperature)


class Streamed(TeacherScorer):
    def local(self, tokens: Tensor, plan: MicroBatchPlan) -> Tensor:
        return streamed_logprobs(self.teacher, tokens, plan=plan,
                                 temperature=self.run.cfg.rollout.temperature)

    def metrics(self) -> dict[str, float]:
        return stream_metrics(self.teacher)  # this rank's bytes and copy time


class OwnLayout(TeacherScorer):
    on_every_stage = True

    def local(self, tokens: Tensor, plan: MicroBatchPlan) -> Tensor:
        t = self.run.cfg.train
        return layout_logprobs(self.teacher, self.run.par, tokens, plan=plan,
                               temperature=self.run.cfg.rollout.temperature,
                               micro_batch_size=t.micro_batch_size,
                               max_tokens=t.max_tokens_per_micro_batch)


class NoTeacher:
    """Runs without a teacher: no hook, no log-probs."""

    def begin_step(self):
        return self

    hook = None

    def finish(self, rollout, plan, logprobs_frac):
        return None, {}


def teacher_scorer(run):
    """The run's scorer, chosen once (module docstring)."""
    if run.teacher is None:
        return NoTeacher()
    if run.teacher.par.detached:
        return OwnLayout(run)
    if isinstance(run.teacher, StreamedTeacher):
        return Streamed(run)
    return Resident(run)


class AfterRollout:
    """One pass over the whole rollout once it is generated, timed as teacher_logprobs."""

    hook = None

    def __init__(self, scorer: TeacherScorer):
        self.scorer = scorer

    def finish(self, rollout: RolloutBatch, plan: MicroBatchPlan,
               logprobs_frac: float) -> tuple[Tensor, dict[str, float]]:
        """-> ([b, s] teacher log-probs on every stage, metrics). `plan`: the log-prob passes'
        micro-batches, whose useful-token share (logprobs_frac) this pass shares."""
        with self.scorer.run.timer.phase("teacher_logprobs"):
            lp = self.scorer.score(rollout.tokens, plan)
        self.scorer.guard(lp, rollout.loss_mask)
        return lp, {FRAC: logprobs_frac, **self.scorer.metrics()}


class DuringRollout:
    """rollout.generate's on_micro_batch hook (teacher.score_during_rollout): the teacher's
    log-probs of each generation micro-batch (each finished group with the continuous engine) as
    soon as it is complete, so that they are ready when the rollout ends instead of starting then.

    What overlaps: on a GPU, the teacher's forward is queued on a second CUDA stream and its
    result stays on the device (no host synchronisation), so it runs while the host already
    launches the next micro-batch's decode steps on the default stream; `finish` joins the
    streams. On CPU the order is interleaved (micro-batch k scored before k+1 is generated) and
    the time is the same. The numbers equal a pass over the whole batch: each row's log-probs
    depend only on its own tokens. The pipeline broadcast of the result happens once, at the end.
    """

    def __init__(self, scorer: TeacherScorer):
        self.scorer = scorer
        self.parts: list[tuple[slice, Optional[Tensor]]] = []
        self.pairs: list[tuple[MicroBatchPlan, RolloutBatch]] = []
        self.seconds = 0.0
        device = compute_device()
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    @property
    def hook(self):
        return self

    def __call__(self, rows: slice, part: RolloutBatch) -> None:
        t0 = time.perf_counter()
        plan = micro_batches(self.scorer.run, part)
        if self.stream is not None:
            self.stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.stream) if self.stream else contextlib.nullcontext():
            lp = self.scorer.local(part.tokens, plan)
        self.parts.append((rows, lp))
        self.pairs.append((plan, part))
        self.seconds += time.perf_counter() - t0

    def result(self, shape) -> Tensor:
        """[b, s] teacher log-probs of the whole rollout, on every pipeline stage."""
        if self.stream is not None:
            torch.cuda.current_stream().wait_stream(self.stream)
        run = self.scorer.run
        out = None
        if run.par.is_last_stage or self.scorer.on_every_stage:
            out = torch.zeros(shape, dtype=torch.float32, device=compute_device())
            for rows, lp in self.parts:
                out[rows, :lp.shape[1]] = lp
        return out if self.scorer.on_every_stage else pp_broadcast(run, out, tuple(shape))

    def finish(self, rollout: RolloutBatch, plan: MicroBatchPlan,
               logprobs_frac: float) -> tuple[Tensor, dict[str, float]]:
        lp = self.result(tuple(rollout.tokens.shape))
        self.scorer.guard(lp, rollout.loss_mask)
        return lp, {FRAC: useful_token_frac(self.scorer.run, self.pairs),
                    "time/teacher_during_rollout_s": self.seconds, **self.scorer.metrics()}


def teacher_guard(run, teacher_lp: Tensor, loss_mask: Tensor) -> None:
    """Every rank raises when the teacher's log-probs (or a teacher trace's) cannot be right."""
    error = None
    try:
        check_teacher_logprobs(teacher_lp, loss_mask, run.teacher.spec.vocab_size)
    except ValueError as e:
        error = f"teacher log-probs ({run.cfg.teacher.checkpoint or 'random weights'}): {e}"
    agree_or_raise(error)
