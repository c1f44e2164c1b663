"""Advantage estimators: sequence rewards [n] and group ids [n] -> advantages [n] and keep [n].

GRPO group normalisation (paper section 3), for sequence i in group g with G_g members:

    A_i = (r_i - mean_g) / (std_g + eps),   std_g = sqrt( (1/G_g) sum_{j in g} (r_j - mean_g)^2 )

with the POPULATION std (1/G). "dr_grpo" drops the std scaling: A_i = r_i - mean_g. A group whose
rewards are all equal (zero variance) carries no signal: its advantages are exactly 0, and its
rows are marked keep == False when drop_zero_variance is set (rejection sampling as in
Skywork-OR1) or True otherwise. Group members need not be contiguous rows.

Teacher trajectories (rollout.teacher_samples, `with_teacher_rows`) join their prompt's group:
  "group"     the estimator runs over all rows: the group's mean and std include the teacher rows;
  "baseline"  the estimator runs over the student rows alone, and a teacher row gets
              A_T = (r_T - mean_S) / (std_S + eps) against the student group's statistics
              (r_T - mean_S without std scaling, and also where the student group has zero
              variance: dividing by eps would turn one correct trajectory into A ~ 1e6).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor


def group_ids_from_size(n: int, group_size: int) -> Tensor:
    """[n] int64 ids for n rows laid out as consecutive groups of group_size: i // group_size."""
    if group_size < 1 or n % group_size != 0:
        raise ValueError(f"group_size: {group_size} does not divide the {n} rows")
    return torch.arange(n) // group_size


def _group_stats(rewards: Tensor, group_ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """fp64 rewards [n], group_ids [n] -> per-row group mean, population std, zero-variance flag."""
    _, inverse = torch.unique(group_ids, return_inverse=True)
    k = int(inverse.max()) + 1 if inverse.numel() else 0
    count = torch.bincount(inverse, minlength=k).to(rewards.dtype)
    like = {"dtype": rewards.dtype, "device": rewards.device}
    mean = torch.zeros(k, **like).index_add_(0, inverse, rewards) / count
    centred = rewards - mean[inverse]
    var = torch.zeros(k, **like).index_add_(0, inverse, centred.square()) / count
    hi = torch.full((k,), -torch.inf, **like).scatter_reduce(0, inverse, rewards, "amax")
    lo = torch.full((k,), torch.inf, **like).scatter_reduce(0, inverse, rewards, "amin")
    return mean[inverse], var.sqrt()[inverse], (hi == lo)[inverse]


def grpo_advantages(rewards: Tensor, group_ids: Tensor, *, eps: float = 1e-6,
                    scale_std: bool = True, drop_zero_variance: bool = False
                    ) -> tuple[Tensor, Tensor]:
    """rewards [n] float, group_ids [n] int -> (advantages [n], keep [n] bool).

    A_i = (r_i - mean_g) / (std_g + eps) (population std), or r_i - mean_g when not scale_std.
    Computed in fp64; returned in the rewards' dtype (fp32 for integer rewards).
    """
    if rewards.dim() != 1 or group_ids.shape != rewards.shape:
        raise ValueError(f"rewards: shape {tuple(rewards.shape)} and group_ids: shape "
                         f"{tuple(group_ids.shape)} must both be [n]")
    out_dtype = rewards.dtype if rewards.is_floating_point() else torch.float32
    r = rewards.detach().to(torch.float64)
    mean, std, zero_var = _group_stats(r, group_ids)
    adv = (r - mean) / (std + eps) if scale_std else r - mean
    adv = torch.where(zero_var, torch.zeros_like(adv), adv)
    keep = ~zero_var if drop_zero_variance else torch.ones_like(zero_var)
    return adv.to(out_dtype), keep


def dr_grpo_advantages(rewards: Tensor, group_ids: Tensor, *, eps: float = 1e-6,
                       drop_zero_variance: bool = False) -> tuple[Tensor, Tensor]:
    """Dr. GRPO: A_i = r_i - mean_g (no std scaling; eps unused, uniform signature)."""
    return grpo_advantages(rewards, group_ids, eps=eps, scale_std=False,
                           drop_zero_variance=drop_zero_variance)


ADVANTAGES: dict[str, Callable[..., tuple[Tensor, Tensor]]] = {
    "grpo": grpo_advantages,
    "dr_grpo": dr_grpo_advantages,
}


def get_advantage_estimator(name: str) -> Callable[..., tuple[Tensor, Tensor]]:
    """The estimator registered under `name`; ValueError listing the known names."""
    if name not in ADVANTAGES:
        raise ValueError(f"unknown advantage estimator {name!r}; known: {sorted(ADVANTAGES)}")
    return ADVANTAGES[name]


_SCALES_STD = {"grpo": True, "dr_grpo": False}
"""Whether the estimator divides by the group's std (for the "baseline" teacher-row advantage)."""
TEACHER_ADVANTAGES = ("group", "baseline")


def with_teacher_rows(estimator: str, rewards: Tensor, group_ids: Tensor, teacher_rows: Tensor, *,
                      mode: str = "group", eps: float = 1e-6, drop_zero_variance: bool = False
                      ) -> tuple[Tensor, Tensor]:
    """Advantages [n] and keep [n] for a batch whose rows teacher_rows [n] bool are teacher
    trajectories (see the module docstring for `mode`). Student rows: the estimator's result over
    the rows it sees; teacher rows in "baseline" mode are always kept (their gate decides)."""
    fn = get_advantage_estimator(estimator)
    if mode not in TEACHER_ADVANTAGES:
        raise ValueError(f"unknown teacher-row advantage {mode!r}; known: {TEACHER_ADVANTAGES}")
    teacher_rows = teacher_rows.bool()
    if mode == "group" or not teacher_rows.any():
        return fn(rewards, group_ids, eps=eps, drop_zero_variance=drop_zero_variance)
    student = ~teacher_rows
    adv = torch.zeros(rewards.shape, dtype=torch.float64, device=rewards.device)
    keep = torch.ones(rewards.shape, dtype=torch.bool, device=rewards.device)
    a_s, keep_s = fn(rewards[student], group_ids[student], eps=eps,
                     drop_zero_variance=drop_zero_variance)
    adv[student], keep[student] = a_s.to(torch.float64), keep_s
    r = rewards.detach().to(torch.float64)
    s_ids, t_ids = group_ids[student], group_ids[teacher_rows]
    mean_s, std_s, _ = _group_stats(r[student], s_ids)          # per student row
    groups, inverse = torch.unique(s_ids, return_inverse=True)
    per_group = {"dtype": torch.float64, "device": r.device}
    group_mean = torch.zeros(len(groups), **per_group).scatter_(0, inverse, mean_s)
    group_std = torch.zeros(len(groups), **per_group).scatter_(0, inverse, std_s)
    at = torch.searchsorted(groups, t_ids).clamp(max=len(groups) - 1)
    if not torch.equal(groups[at], t_ids):
        raise ValueError("with_teacher_rows: a group has teacher rows but no student row")
    centred, std = r[teacher_rows] - group_mean[at], group_std[at]
    scaled = _SCALES_STD.get(estimator, True) & (std > 0)
    adv[teacher_rows] = torch.where(scaled, centred / (std + eps), centred)
    out_dtype = rewards.dtype if rewards.is_floating_point() else torch.float32
    return adv.to(out_dtype), keep
