"""`Run`: what one training run holds while it trains, built once by train/setup.py `setup`.

The phases (train/phases.py), the teacher's scoring (train/teacher_scoring.py), the evaluation and
the loop take it as their first argument and read the parts they need. It lives apart from setup
so that they can name its type without importing how it is built (no import circle through
setup, which chooses the teacher scorer).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Optional

from rlad_megatron.bookkeeping import checkpoint as tckpt
from rlad_megatron.bookkeeping.reward_watch import RewardWatch
from rlad_megatron.bookkeeping.run_lock import RunLocks
from rlad_megatron.bookkeeping.timers import PhaseTimer
from rlad_megatron.config.run import RunConfig
from rlad_megatron.data.formats import PromptFormat
from rlad_megatron.data.sampler import PromptSampler
from rlad_megatron.data.tasks import PromptSplits
from rlad_megatron.data.tokenizer import Tokenizer
from rlad_megatron.models.build import Student, Teacher
from rlad_megatron.models.reference import ReferenceWeights
from rlad_megatron.runtime import DistEnv, Parallel


@dataclass
class Run:
    """Everything the loop touches. Built by train/setup.py `setup`."""

    cfg: RunConfig
    """The validated run configuration."""
    env: DistEnv
    """The process's place in the launch (rank, world size, backend)."""
    par: Parallel
    """The student's parallel layout and groups (runtime/parallel.py)."""
    tokenizer: Tokenizer
    student: Student
    """The policy being trained, with its optimizer (models/build.py)."""
    teacher: Optional[Teacher]
    """The frozen teacher, None for algorithms without one."""
    scheduler: object
    """megatron's OptimizerParamScheduler of the student's optimizer."""
    splits: PromptSplits
    """Train, validation and held-out prompts."""
    sampler: PromptSampler
    """The training prompts of each step (resumable)."""
    fmt: PromptFormat
    """How a prompt is rendered and a response turned into the reward's text."""
    reward_fn: Callable
    """(text, PromptItem) -> reward (data/rewards.py)."""
    metrics: object
    """The run's metric sinks (bookkeeping/metrics.py): JSONL, TensorBoard, console."""
    timer: PhaseTimer
    """Seconds per phase of the current step."""
    state: tckpt.TrainState
    """Step, consumed prompts, bad-step count: what a checkpoint restores."""
    config_yaml: str
    """The resolved config as saved beside the run."""
    resumed_from: Optional[str] = None
    """The checkpoint this run resumed from, if any."""
    lock: Optional[RunLocks] = None
    """RUN_DIR/.rlad_lock and CHECKPOINT_DIR/.rlad_lock (rank 0): released when the run ends
    (train/loop.py)."""
    reference: Optional[ReferenceWeights] = None
    """pi_ref of the reference KL (loss.*.kl_beta > 0): the student's starting weights."""
    reward_watch: RewardWatch = dataclasses.field(default_factory=RewardWatch)
    """Warns when every reward of several steps in a row is 0 (or 1): nothing to learn."""
    scorer: object = None
    """The teacher's log-prob passes (train/teacher_scoring.py), chosen for how the teacher is
    held: resident, streamed from host memory, on its own layout, or none."""

    @property
    def is_logging_rank(self) -> bool:
        return self.par.is_last_stage and self.par.tp_rank == 0 and self.par.dp_rank == 0
