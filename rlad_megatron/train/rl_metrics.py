"""What an RL step reports besides its update's loss statistics: the rollout's rewards and
lengths, the selection, the teacher trajectories' gates, and the step's bookkeeping, averaged
over the data-parallel ranks (train/loop.py rl_step hands its results here)."""

from __future__ import annotations

import math
from typing import Optional

import torch

from rlad_megatron.data.batch import RolloutBatch, TrainBatch
from rlad_megatron.losses import distill_share
from rlad_megatron.train import phases


def rl_step_metrics(run, rollout: RolloutBatch, rewards: torch.Tensor, loss_mask: torch.Tensor,
                    batch: TrainBatch, teacher_rows: Optional[torch.Tensor],
                    update: dict[str, float], extra: dict[str, float]) -> dict[str, float]:
    """The step's metrics: `update` (the update's finalised loss statistics), the rollout's over
    the student rows (rewards [b], loss_mask [b, s] after advantage masking; teacher_rows [b]
    bool or None), and `extra` (the passes' own: useful-token shares, timings, a streamed
    teacher's bytes, whether the old-policy pass ran)."""
    student = ~teacher_rows if teacher_rows is not None else torch.ones_like(rewards, dtype=bool)
    masked = float((loss_mask[student].sum(1) == 0).float().mean())  # rows without loss tokens
    selected = batch.selected_frac
    metrics = dict(update)
    metrics.update(phases.dp_mean(run, {
        "rollout/reward_mean": float(rewards[student].mean()),
        "rollout/reward_all_zero": float((rewards[student] == 0).all()),
        "rollout/reward_all_one": float((rewards[student] == 1).all()),
        "rollout/response_len": float(rollout.response_lengths[student].float().mean()),
        "rollout/masked_frac": masked,
        "selection/selected_frac": 0.0 if selected is None or math.isnan(selected) else selected,
        "throughput/tokens": float(rollout.tokens.numel()),
        **(phases.imitation_metrics(run, batch) if batch.gates is not None else {}),
    }))
    if teacher_rows is not None:
        metrics["joint/distill_share"] = distill_share(metrics)
    metrics.update(extra)
    return metrics
