"""A teacher on its own parallel layout at 2 ranks (teacher.parallel): teacher TP=2 beside a
student at TP=1 / DP=2, and teacher TP=1 beside a student at TP=2, against float64 and against
the same teacher on the student's layout, with megatron's parallel_state globals unset during the
teacher's pass (tests/teacher_layout_checks.py). A failure with the globals unset names a megatron
call that still reads a global on the teacher's path; a numeric failure limited to one direction
usually means the row exchange (models/teacher_layout.py) put rows in the wrong order.
"""

import pytest

from distributed_helpers import assert_all_ranks
from teacher_layout_checks import check_teacher_checkpoint, check_teacher_layout
from rlad_megatron.runtime import ParallelConfig
from rlad_megatron.runtime.teacher_parallel import TeacherParallelConfig, init_teacher_parallel


@pytest.mark.parametrize("parallel", [(1, 1)], indirect=True, ids=["student-dp2"])
@pytest.mark.parametrize("arch", ["tiny-llama", "tiny-qwen3"], ids=["llama", "qwen3-tied"])
def test_teacher_tp2_beside_student_dp2_matches_float64_and_shared_layout(parallel, arch):
    check_teacher_layout(parallel, TeacherParallelConfig(tensor=2), arch=arch)


@pytest.mark.parametrize("parallel", [(1, 1)], indirect=True, ids=["student-dp2"])
@pytest.mark.parametrize("teacher", [TeacherParallelConfig(tensor=2),
                                     TeacherParallelConfig(pipeline=2)], ids=["tp2", "pp2"])
def test_streamed_teacher_on_its_own_layout_matches_float64_and_shared_layout(parallel, teacher):
    check_teacher_layout(parallel, teacher, streamed=True)


@pytest.mark.parametrize("parallel", [(2, 1)], indirect=True, ids=["student-tp2"])
def test_teacher_tp1_beside_student_tp2_matches_float64_and_shared_layout(parallel):
    check_teacher_layout(parallel, TeacherParallelConfig(tensor=1), arch="tiny-qwen2")


@pytest.mark.parametrize("parallel", [(1, 1)], indirect=True, ids=["student-dp2"])
def test_teacher_pp2_with_token_budgets_matches_float64(parallel):
    check_teacher_layout(parallel, TeacherParallelConfig(pipeline=2), max_tokens=24)


@pytest.mark.parametrize("parallel", [(1, 2)], indirect=True, ids=["student-pp2"])
def test_teacher_layout_equal_to_student_shares_its_parallel(parallel):
    same = init_teacher_parallel(TeacherParallelConfig(),
                                 ParallelConfig(tensor=1, pipeline=2), parallel)
    explicit = init_teacher_parallel(TeacherParallelConfig(tensor=1, pipeline=2),
                                     ParallelConfig(tensor=1, pipeline=2), parallel)
    assert_all_ranks(same is parallel and explicit is parallel,
                     "a teacher layout equal to the student's must share its Parallel")


@pytest.mark.parametrize("parallel", [(1, 1)], indirect=True, ids=["student-dp2"])
@pytest.mark.parametrize("teacher", [TeacherParallelConfig(tensor=2),
                                     TeacherParallelConfig(pipeline=2)], ids=["tp2", "pp2"])
def test_teacher_loads_a_checkpoint_saved_at_another_layout(parallel, teacher, shared_tmp_path):
    """A torch_dist checkpoint written at TP=1 / PP=1 (the student's layout here) reshards on load
    into the teacher's own TP=2 or PP=2 chunks, with megatron's globals unset (checkpoint replica
    ids are one of the traps that read them)."""
    check_teacher_checkpoint(parallel, teacher, shared_tmp_path / f"ckpt_{teacher.tensor}")
