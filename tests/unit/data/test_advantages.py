"""GRPO group-normalised advantages (data/advantages.py) against a numpy float64 reference.

Guards the population std (1/G), the Dr. GRPO variant, zero-variance groups (advantage exactly 0,
dropped or kept), and groups whose rows are not contiguous.
"""

import math

import numpy as np
import pytest
import torch

from rlad_megatron.data.advantages import (ADVANTAGES, dr_grpo_advantages,
                                           get_advantage_estimator, group_ids_from_size,
                                           grpo_advantages)

EPS = 1e-6


def reference(rewards, group_ids, *, scale_std=True):
    rewards, group_ids = np.asarray(rewards, np.float64), np.asarray(group_ids)
    adv, zero_var = np.zeros_like(rewards), np.zeros(len(rewards), bool)
    for g in np.unique(group_ids):
        rows = group_ids == g
        r = rewards[rows]
        if np.all(r == r[0]):
            zero_var[rows] = True
            continue
        centred = r - r.mean()
        adv[rows] = centred / (r.std(ddof=0) + EPS) if scale_std else centred
    return adv, zero_var


REWARDS = [1.0, 0.0, 0.0, 1.0,   0.1, 0.1, 0.1, 0.1,   0.0, 0.5, 2.0, 1.0,   1.0, 1.0, 1.0, 1.0]
GROUPS = group_ids_from_size(16, 4)


@pytest.mark.parametrize("scale_std", [True, False])
def test_advantages_match_numpy_reference(scale_std):
    adv, keep = grpo_advantages(torch.tensor(REWARDS, dtype=torch.float64), GROUPS,
                                scale_std=scale_std)
    expected, _ = reference(REWARDS, GROUPS.numpy(), scale_std=scale_std)
    np.testing.assert_allclose(adv.numpy(), expected, rtol=1e-12, atol=1e-12)
    assert keep.all()


def test_population_std_not_sample_std():
    adv, _ = grpo_advantages(torch.tensor([0.0, 1.0], dtype=torch.float64), torch.tensor([0, 0]))
    # population std 0.5 (the sample std would be 0.707)
    assert adv.tolist() == pytest.approx([-0.5 / (0.5 + EPS), 0.5 / (0.5 + EPS)], rel=1e-12)


@pytest.mark.parametrize("drop", [True, False])
def test_zero_variance_groups_are_zero_and_dropped_or_kept(drop):
    adv, keep = grpo_advantages(torch.tensor(REWARDS, dtype=torch.float64), GROUPS,
                                drop_zero_variance=drop)
    _, zero_var = reference(REWARDS, GROUPS.numpy())
    assert zero_var.sum() == 8                       # groups 1 (all 0.1) and 3 (all 1.0)
    assert torch.count_nonzero(adv[torch.from_numpy(zero_var)]) == 0
    expected_keep = (~zero_var).tolist() if drop else [True] * 16
    assert keep.tolist() == expected_keep


def test_zero_variance_advantages_are_exactly_zero_even_when_the_mean_rounds():
    # mean(0.1, 0.1, 0.1) is 0.10000000000000002 in float64: r - mean is not 0 on its own
    rewards = torch.tensor([0.1, 0.1, 0.1, 0.3, 0.3, 0.3], dtype=torch.float64)
    adv, keep = grpo_advantages(rewards, group_ids_from_size(6, 3), drop_zero_variance=True)
    assert torch.count_nonzero(adv) == 0 and not keep.any()


def test_non_contiguous_groups_and_integer_rewards():
    rewards = torch.tensor([1, 0, 3, 0, 1, 1])
    ids = torch.tensor([7, 2, 7, 2, 7, 2])
    adv, _ = grpo_advantages(rewards, ids)
    expected, _ = reference(rewards.numpy(), ids.numpy())
    assert adv.dtype == torch.float32
    np.testing.assert_allclose(adv.numpy(), expected, rtol=1e-6)


def test_registry_and_dr_grpo():
    assert ADVANTAGES == {"grpo": grpo_advantages, "dr_grpo": dr_grpo_advantages}
    r = torch.tensor(REWARDS, dtype=torch.float64)
    assert torch.equal(get_advantage_estimator("dr_grpo")(r, GROUPS)[0],
                       grpo_advantages(r, GROUPS, scale_std=False)[0])
    with pytest.raises(ValueError, match=r"\['dr_grpo', 'grpo'\]"):
        get_advantage_estimator("ppo")


def test_group_size_must_divide_rows():
    assert group_ids_from_size(6, 3).tolist() == [0, 0, 0, 1, 1, 1]
    with pytest.raises(ValueError, match="group_size: 4"):
        group_ids_from_size(6, 4)


# ---- teacher rows (with_teacher_rows) ----------------------------------------------------------
from rlad_megatron.data.advantages import with_teacher_rows  # noqa: E402


def test_teacher_rows_inside_the_group_statistics():
    rewards = torch.tensor([0.0, 0.0, 1.0, 1.0])          # students 0, 0, 1; teacher 1
    teacher = torch.tensor([False, False, False, True])
    adv, keep = with_teacher_rows("grpo", rewards, torch.zeros(4, dtype=torch.long), teacher,
                                  mode="group", eps=0.0)
    mean, std = 0.5, 0.5
    assert adv.tolist() == pytest.approx([(r - mean) / std for r in rewards.tolist()])
    assert keep.all()


def test_teacher_rows_against_the_student_baseline():
    rewards = torch.tensor([0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0])
    teacher = torch.tensor([False, False, False, True, False, False, False, True])
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    adv, keep = with_teacher_rows("grpo", rewards, groups, teacher, mode="baseline", eps=0.0)
    m0, s0 = 1 / 3, math.sqrt(2 / 9)
    assert adv[3].item() == pytest.approx((1 - m0) / s0)
    assert adv[:3].tolist() == pytest.approx([(r - m0) / s0 for r in (0.0, 0.0, 1.0)])
    # student group 1 has zero variance (all 1): its teacher row is centred, not divided by eps
    assert adv[7].item() == pytest.approx(-1.0) and adv[4:7].abs().max() == 0
    dr, _ = with_teacher_rows("dr_grpo", rewards, groups, teacher, mode="baseline")
    assert dr[3].item() == pytest.approx(1 - m0)
    assert keep.all()
