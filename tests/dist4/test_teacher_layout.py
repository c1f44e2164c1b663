"""A teacher on its own parallel layout at 4 ranks (teacher.parallel): teacher PP=2 x TP=2 beside
a student at DP=4, and teacher TP=4 beside a student at TP=2 x DP=2, against float64 and against
the same teacher on the student's layout, with megatron's parallel_state globals unset during the
teacher's pass (tests/teacher_layout_checks.py)."""

import pytest

from teacher_layout_checks import check_teacher_checkpoint, check_teacher_layout
from rlad_megatron.runtime.teacher_parallel import TeacherParallelConfig

# TP=4 needs 4 query groups (the tiny presets have 2): 8 heads of 16, 4 query groups
WIDE_HEADS = {"num_attention_heads": 8, "num_query_groups": 4, "kv_channels": 16}


@pytest.mark.parametrize("parallel", [(1, 1)], indirect=True, ids=["student-dp4"])
@pytest.mark.parametrize("arch", ["tiny-llama", "tiny-qwen3"], ids=["llama", "qwen3-tied"])
def test_teacher_pp2_tp2_beside_student_dp4_matches_float64_and_shared_layout(parallel, arch):
    check_teacher_layout(parallel, TeacherParallelConfig(tensor=2, pipeline=2), arch=arch)


@pytest.mark.parametrize("parallel", [(2, 1)], indirect=True, ids=["student-tp2-dp2"])
def test_teacher_tp4_beside_student_tp2_dp2_matches_float64_and_shared_layout(parallel):
    check_teacher_layout(parallel, TeacherParallelConfig(tensor=4), arch="tiny-qwen2",
                         spec_kw=WIDE_HEADS)


@pytest.mark.parametrize("parallel", [(2, 2)], indirect=True, ids=["student-tp2-pp2"])
def test_teacher_tp1_pp2_vpp2_beside_student_tp2_pp2(parallel):
    # 4 rows over the teacher's 2 DP ranks: 2 micro-batches each, a multiple of its PP
    check_teacher_layout(parallel, TeacherParallelConfig(tensor=1, pipeline=2, virtual_pipeline=2),
                         b_per_rank=4)


@pytest.mark.parametrize("parallel", [(1, 1)], indirect=True, ids=["student-dp4"])
def test_teacher_pp2_tp2_loads_a_checkpoint_saved_at_tp1_pp1(parallel, shared_tmp_path):
    check_teacher_checkpoint(parallel, TeacherParallelConfig(tensor=2, pipeline=2),
                             shared_tmp_path / "teacher_tp1")
