"""`rlad plan` with a teacher on its own layout (teacher.parallel): the teacher's weights at its
own TP x PP by hand, the joint search beside the shared layouts (the best shared layout reported
next to the chosen one), a fixed teacher layout from flags or the run config, and refusals that
name teacher.parallel. A failure means the planner would recommend a teacher layout the trainer
refuses, or count the teacher's memory at the student's sizes."""

import re

import pytest

from rlad_megatron.launch.memory import Workload, estimate, stage_parameters
from rlad_megatron.launch.plan import PlanRequest, build_request, layout_problems, plan
from rlad_megatron.launch.plan_report import format_plan, plan_to_dict
from rlad_megatron.launch.step_time import estimate_step
from rlad_megatron.models.spec import get_preset

TEACHER, STUDENT = get_preset("llama3.1-70b"), get_preset("llama3.1-8b")


def test_teacher_weights_at_its_own_tp8_are_half_of_tp4_by_hand():
    # Llama-3.1-70B: h=8192, ffn=28672, 64 heads, 8 query groups, head_dim 128, 80 layers,
    # vocab 128256 untied (padded to 126 * 1024, a multiple of 128 * TP); one TP=8 rank holds
    # 1/8 of every matrix and whole norms
    h, f, q, kv = 8192, 28672, 64 * 128, 8 * 128
    layer = (h * (q + 2 * kv) + q * h + 3 * h * f) // 8 + 2 * h
    params = 80 * layer + 2 * (126 * 1024) * h // 8 + h     # embedding + output, final norm
    own = estimate(TEACHER, STUDENT, 2, 1, 4, Workload(), teacher_tp=8, teacher_pp=1)
    shared = estimate(TEACHER, STUDENT, 4, 1, 2, Workload())
    assert own.teacher_weights == params * 2 == stage_parameters(TEACHER, 8, 1) * 2
    assert abs(own.teacher_weights / shared.teacher_weights - 0.5) < 0.001
    rows_cells = 16 * 8 * 2048
    assert own.teacher_exchange == rows_cells * 12 and shared.teacher_exchange == 0


def test_a_teacher_layout_equal_to_the_students_is_the_shared_estimate():
    w = Workload()
    for tp, pp, dp in ((4, 1, 2), (2, 2, 2)):
        assert (estimate(TEACHER, STUDENT, tp, pp, dp, w, teacher_tp=tp, teacher_pp=pp)
                == estimate(TEACHER, STUDENT, tp, pp, dp, w))
        assert (estimate_step(TEACHER, STUDENT, tp, pp, dp, w, gpus_per_node=8, teacher_tp=tp,
                              teacher_pp=pp)
                == estimate_step(TEACHER, STUDENT, tp, pp, dp, w, gpus_per_node=8))


def test_the_teacher_forward_is_spread_over_the_whole_world_at_either_layout():
    w = Workload()
    own = estimate_step(TEACHER, STUDENT, 2, 1, 4, w, gpus_per_node=8, teacher_tp=8)
    shared = estimate_step(TEACHER, STUDENT, 2, 1, 4, w, gpus_per_node=8)
    assert own.teacher_forward == pytest.approx(shared.teacher_forward)
    assert own.teacher_exchange > 0 and shared.teacher_exchange == 0
    assert own.student_compute == shared.student_compute and own.rollout == shared.rollout


def test_joint_search_reports_the_best_shared_layout_beside_the_chosen_one():
    req = build_request(nodes=1, gpus_per_node=8, teacher="llama3.1-70b",
                        student="llama3.1-8b", joint=True)
    p = plan(req)
    assert p.ok and p.shared is not None and not p.shared.own_teacher
    assert p.chosen.time.total <= p.shared.time.total
    shared_only = plan(build_request(nodes=1, gpus_per_node=8, teacher="llama3.1-70b",
                                     student="llama3.1-8b"))
    assert shared_only.shared is None and (shared_only.chosen.key == p.shared.key)
    assert any(lp.own_teacher for lp in p.layouts)
    for lp in p.layouts:  # every proposed pair is one the trainer accepts
        assert not layout_problems(req, lp.tp, lp.pp, lp.t_tp or None, lp.t_pp or None)
    text = format_plan(p)
    assert "shared layout (teacher on the student's groups): best " in text
    assert plan_to_dict(p)["shared"]["teacher_tp"] == p.shared.tp


def test_the_recipe_layout_student_tp2_teacher_tp8_fits_on_one_node():
    p = plan(build_request(nodes=1, gpus_per_node=8, teacher="llama3.1-70b",
                           student="llama3.1-8b", tp=2, teacher_tp=8))
    assert p.ok and (p.chosen.tp, p.chosen.dp, p.chosen.t_tp, p.chosen.t_pp) == (2, 4, 8, 1)
    assert p.chosen.name == "TP=2 PP=1 DP=4 / teacher TP=8 PP=1 DP=1"
    assert p.chosen.memory.teacher_weights < p.shared.memory.teacher_weights / 1.9


@pytest.mark.parametrize("t_tp,t_pp,work,match", [
    (3, 1, {}, "teacher.parallel.tensor: 3 does not divide the GPUs per node 8"),
    (1, 3, {}, "teacher.parallel.pipeline: 3 does not divide teacher.num_layers: 80"),
    (1, 1, {"prompts_per_step": 4, "group_size": 1},
     r"rollout.prompts_per_step \* rollout.group_size = 4 is not divisible by the data-parallel "
     "size 8 of the teacher"),
])
def test_teacher_layout_problems_name_teacher_parallel(t_tp, t_pp, work, match):
    req = PlanRequest(TEACHER, STUDENT, nodes=1, gpus_per_node=8, workload=Workload(**work))
    problems = layout_problems(req, 2, 1, t_tp, t_pp)
    assert any(re.search(match, p) for p in problems), problems


def test_the_run_configs_teacher_parallel_fixes_the_teachers_layout():
    req = build_request(nodes=1, gpus_per_node=8, config=None,
                        overrides=["student.preset=llama3.1-8b", "teacher.preset=llama3.1-70b",
                                   "parallel.tensor=2", "teacher.parallel.tensor=8"])
    assert (req.tp, req.teacher_tp, req.teacher_pp) == (2, 8, 1)
    assert plan(req).chosen.t_tp == 8


def test_a_streamed_teacher_on_its_own_layout_counts_its_host_copies_at_its_sizes():
    req = build_request(nodes=1, gpus_per_node=8, teacher="llama3.1-405b",
                        student="llama3.1-8b", tp=2, teacher_tp=8, teacher_offload="stream",
                        prompts_per_step=8)
    p = plan(req)
    own = p.chosen
    assert own.own_teacher and own.t_tp == 8
    shared_tp2 = [lp for lp in p.layouts if lp.key == (2, 1, 2, 1)]
    # every rank holds its TP shard of the layers: 1/8 at the teacher's TP=8 against 1/2
    assert own.host_per_node * 4 == pytest.approx(shared_tp2[0].host_per_node, rel=1e-3)
    # the hidden states of the teacher's rows: all 64 on its single DP rank
    assert own.memory.teacher_activations == 8 * 8 * 2048 * 16384 * 2
