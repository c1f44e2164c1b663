"""Selective-imitation policies (data/selection.py) against hand-computed teacher masks.

Guards which tokens anchor their ratio to the teacher; a failure means a policy gates the wrong
sequences or the statistics (alignment, gap, selected fraction) changed meaning.
"""

import math

import pytest
import torch

from rlad_megatron.data.selection import SELECTION_POLICIES, select_teacher_tokens

D = torch.float64
#                       seq 0: A=1.5, gap +1   seq 1: A=-0.2, gap -1   seq 2: A=0.5, gap +0.5/-1.5
OLD = torch.tensor([[-9.0, -1.0, -1.0, -1.0], [-9.0, -1.0, -2.0, 0.0], [-9.0, -1.0, -1.0, -1.0]],
                   dtype=D)
TEACHER = torch.tensor([[0.0, 0.0, 0.0, 5.0], [0.0, -2.0, -3.0, 0.0], [0.0, -0.5, -2.5, 7.0]],
                       dtype=D)
MASK = torch.tensor([[0, 1, 1, 0], [0, 1, 1, 0], [0, 1, 1, 0]], dtype=torch.bool)
ADV = torch.tensor([1.5, -0.2, 0.5], dtype=D)


def select(policy, **taus):
    return select_teacher_tokens(ADV, OLD, TEACHER, MASK, policy=policy, **taus)


def test_statistics_hand_computed():
    s = select("paper")
    assert s.seq_alignment.tolist() == [1.0, -1.0, -0.5]
    assert s.token_gap.tolist() == [[0, 1, 1, 0], [0, -1, -1, 0], [0, 0.5, -1.5, 0]]
    assert s.seq_advantage.tolist() == [1.5, -0.2, 0.5]


@pytest.mark.parametrize("policy, taus, rows", [
    ("paper", {}, [True, True, True]),
    ("advantage", {"tau_adv": 0.5}, [True, False, True]),
    ("advantage", {"tau_adv": 0.2}, [True, True, True]),      # |A|: negative A counts too
    ("alignment", {"tau_align": -0.5}, [True, False, True]),
    ("alignment", {"tau_align": 0.0}, [True, False, False]),
    ("both", {"tau_adv": 0.1, "tau_align": -0.5}, [True, False, True]),
    ("both", {"tau_adv": 1.0, "tau_align": -0.5}, [True, False, False]),
])
def test_policies_give_hand_computed_masks(policy, taus, rows):
    s = select(policy, **taus)
    expected = torch.tensor(rows)[:, None] & MASK
    assert torch.equal(s.teacher_mask, expected)
    assert s.seq_selected.tolist() == rows
    assert s.selected_frac == pytest.approx(sum(rows) / 3)
    assert s.policy == policy


def test_per_token_advantages_reduce_to_their_mean_over_response_tokens():
    adv = torch.tensor([[9.0, 1.0, 2.0, 9.0], [0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]], dtype=D)
    s = select_teacher_tokens(adv, OLD, TEACHER, MASK, policy="advantage", tau_adv=0.5)
    assert s.seq_advantage.tolist() == [1.5, 0.0, 0.5]
    assert s.seq_selected.tolist() == [True, False, True]


def test_no_loss_tokens_gives_nan_fraction_and_empty_mask():
    s = select_teacher_tokens(ADV, OLD, TEACHER, torch.zeros_like(MASK))
    assert not s.teacher_mask.any() and math.isnan(s.selected_frac)
    assert s.seq_alignment.tolist() == [0.0, 0.0, 0.0]


def test_unknown_policy_lists_known_ones():
    assert set(SELECTION_POLICIES) == {"paper", "advantage", "alignment", "both"}
    with pytest.raises(ValueError, match=r"\['advantage', 'alignment', 'both', 'paper'\]"):
        select("random")
