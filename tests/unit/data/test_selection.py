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


# ---- the three gates on teacher trajectories (gate_trajectories) -----------------------------
# two prompts, group ids 0 and 1; rows 0-2 students of prompt 0, row 3 its teacher row,
# rows 4-6 students of prompt 1, row 7 its teacher row
from rlad_megatron.data.selection import GATES, gate_trajectories, group_success_rate  # noqa: E402

T_ROWS = torch.tensor([0, 0, 0, 1, 0, 0, 0, 1], dtype=torch.bool)
GROUPS = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
REWARDS = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0])   # students 1/3 and 2/3 right
ADVS = torch.tensor([0.0, 0.0, 0.0, 1.2, 0.0, 0.0, 0.0, 0.05])
RESP = torch.zeros(8, 4, dtype=torch.bool)
RESP[:, 1:3] = True
S_LP = torch.full((8, 4), -0.5)
S_LP[3, 1:3] = torch.tensor([-1.0, -3.0])    # student on teacher row 3: mean -2.0
S_LP[7, 1:3] = torch.tensor([-0.4, -0.6])    # on row 7: mean -0.5
T_LP = torch.full((8, 4), -0.1)              # the teacher: mean -0.1 -> gaps 1.9 and 0.4


def gates(**kw):
    args = dict(teacher_rows=T_ROWS, group_ids=GROUPS, rewards=REWARDS, advantages=ADVS,
                old_logprobs=S_LP, teacher_logprobs=T_LP, response_mask=RESP)
    return gate_trajectories(**args, **kw)


def test_group_success_rate_counts_student_rows_only():
    rate = group_success_rate(REWARDS, GROUPS, ~T_ROWS)
    assert rate.tolist() == pytest.approx([1 / 3] * 4 + [2 / 3] * 4)


def test_each_gate_hand_computed():
    g = gates(tau_align=1.5, tau_adv=0.1, tau_success=0.5)
    assert g.alignment[T_ROWS].tolist() == pytest.approx([1.9, 0.4])
    assert g.passed["aligned"].nonzero().flatten().tolist() == [7]          # gap 0.4 <= 1.5
    assert g.passed["raises_reward"].nonzero().flatten().tolist() == [3]    # A 1.2 >= 0.1
    assert g.passed["not_exploring"].nonzero().flatten().tolist() == [3]    # 1/3 < 0.5
    assert g.selected.sum() == 0
    assert g.pass_rates() == {"aligned": 0.5, "raises_reward": 0.5, "not_exploring": 0.5,
                              "selected": 0.0}


def test_loglik_metric_and_switching_gates_off():
    g = gates(align_metric="loglik", tau_align=-1.0, tau_adv=0.1, tau_success=0.5,
              use_aligned=True)
    assert g.alignment[T_ROWS].tolist() == pytest.approx([-2.0, -0.5])
    assert g.passed["aligned"].nonzero().flatten().tolist() == [7]
    off = gates(tau_align=1.5, tau_adv=0.1, tau_success=0.5, use_aligned=False)
    assert off.selected.nonzero().flatten().tolist() == [3]
    none = gates(use_aligned=False, use_advantage=False, use_explore=False)
    assert torch.equal(none.selected, T_ROWS)
    assert set(none.passed) == set(GATES)
    assert not none.selected[~T_ROWS].any()      # student rows never pass


def test_teacher_equal_to_student_has_zero_alignment_gap():
    g = gate_trajectories(teacher_rows=T_ROWS, group_ids=GROUPS, rewards=REWARDS,
                          advantages=ADVS, old_logprobs=S_LP, teacher_logprobs=S_LP,
                          response_mask=RESP, tau_align=0.0)
    assert g.alignment.abs().max() == 0.0 and torch.equal(g.passed["aligned"], T_ROWS)
