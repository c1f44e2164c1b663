"""The on-policy fast path: old log-probs from the update's own forward instead of a pass.

When a step's update is one optimizer step over the whole batch (train.mini_batches = 1; each
mini-batch is seen once, there is no epoch loop), the policy that the update's forward runs is
pi_old, the policy that generated the rollout. The old-policy pass (train/loop.py, phase
"old_logprobs") would recompute exactly the log-probs that forward computes, so it is skipped and
the loss reads old_logprobs = the detached log-probs of its own forward (train/step.py
`forward_backward`, TrainBatch.old_logprobs None). The ratio is exp(lp - lp.detach()) = 1 with
d ratio / d lp = 1: the same losses, gradients and loss metrics as with the pass (TRL and verl do
the same).

It applies only where nothing reads old_logprobs before the update:
    train.mini_batches = 1          later mini-batches run on weights the first one changed
    no teacher trajectories         the aligned gate (data/selection.py gate_trajectories) reads
                                    the student's log-probs of the teacher rows before the update
    selection.policy paper or       alignment / both choose the teacher mask from lp_T - lp_old
    advantage (with a teacher)      before the update
Everything else that reads the step's log-probs does so inside the loss (TRRD's ratio and teacher
clamp, KDRL's GRPO term, the reference KL, the loss metrics) or does not read lp_old at all (the
teacher guard, rewards, advantages). Without the pass, the teacher mask's statistic
TrainBatch.seq_alignment (lp_T - lp_old per row) is not computed (None).

train.old_logprobs picks: "auto" (the fast path wherever it applies, else the pass), "pass"
(always the separate pass) or "reuse" (the fast path, refused by validate_run_config where it does
not apply).
"""

from __future__ import annotations

OLD_LOGPROBS_MODES = ("auto", "pass", "reuse")
"""train.old_logprobs values (module docstring)."""

POLICIES_WITHOUT_OLD = ("paper", "advantage")
"""selection.policy values whose teacher mask does not read lp_old (data/selection.py)."""


def fast_path_blockers(cfg) -> list[str]:
    """Why the run's update cannot take its old log-probs from its own forward (empty: it can).
    `cfg`: a RunConfig (config/run.py)."""
    out = []
    if cfg.train.mini_batches != 1:
        out.append(f"train.mini_batches = {cfg.train.mini_batches} (the mini-batches after the "
                   "first run on updated weights)")
    if cfg.uses_trajectories:
        out.append(f"rollout.teacher_samples = {cfg.rollout.teacher_samples} (the trajectory "
                   "gates read the student's log-probs before the update)")
    if cfg.needs_teacher and cfg.selection.policy not in POLICIES_WITHOUT_OLD:
        out.append(f"selection.policy = {cfg.selection.policy} (the teacher mask is chosen from "
                   "lp_T - lp_old before the update)")
    return out


def reuses_update_forward(cfg) -> bool:
    """True when the step skips the old-policy pass (train.old_logprobs and the blockers)."""
    mode = cfg.train.old_logprobs
    return cfg.is_rl and mode != "pass" and not fast_path_blockers(cfg)
