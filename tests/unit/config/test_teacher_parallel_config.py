"""teacher.parallel (runtime/teacher_parallel.py): the default is the student's layout (the
teacher shares its Parallel, today's behaviour); a layout of its own is validated before any model
is built, and every feature that would run the teacher on the student's layout is refused by name.
"""

import pytest

from rlad_megatron.models.layout_check import TEACHER_NAMES, model_layout_problems
from rlad_megatron.models.spec import get_preset
from rlad_megatron.runtime.parallel import ParallelConfig
from rlad_megatron.runtime.teacher_parallel import TeacherParallelConfig, _partition
from rlad_megatron.config.run import load_config
from rlad_megatron.config.validate import validate_run_config


def _config(*over):
    return load_config(None, ["student.preset=tiny-llama", "student.random_init=true",
                              "teacher.preset=tiny-llama", "teacher.random_init=true",
                              "rollout.prompts_per_step=8", "rollout.group_size=2",
                              "train.micro_batch_size=2", *over])


def test_default_is_the_students_layout_and_zero_fields_take_the_students_values():
    student = ParallelConfig(tensor=2, pipeline=2, virtual_pipeline=2)
    assert not TeacherParallelConfig().is_own(student)
    assert not TeacherParallelConfig(tensor=2, pipeline=2).is_own(student)
    assert TeacherParallelConfig(tensor=4).resolve(student) == ParallelConfig(
        tensor=4, pipeline=2, virtual_pipeline=2, seed=student.seed)
    assert TeacherParallelConfig(pipeline=1).resolve(student).virtual_pipeline is None
    assert TeacherParallelConfig(tensor=4).is_own(student)
    assert TeacherParallelConfig(virtual_pipeline=1).is_own(student)
    validate_run_config(_config(), world_size=2, check_files=False)
    assert _config().teacher.parallel == TeacherParallelConfig()


def test_groups_follow_megatrons_rank_order_tp_innermost_pp_outermost():
    # tp=2, dp=2, pp=2 over 8 ranks: rank = tp_rank + 2 * (dp_rank + 2 * pp_rank)
    assert _partition(2, 2, 2, "tp") == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert _partition(2, 2, 2, "dp") == [[0, 2], [1, 3], [4, 6], [5, 7]]
    assert _partition(2, 2, 2, "pp") == [[0, 4], [1, 5], [2, 6], [3, 7]]
    assert _partition(2, 2, 2, "mp") == [[0, 1, 4, 5], [2, 3, 6, 7]]


def test_own_layout_accepted_where_it_divides_the_world():
    validate_run_config(_config("teacher.parallel.tensor=2"), world_size=2, check_files=False)
    validate_run_config(_config("parallel.tensor=2", "teacher.parallel.tensor=1"), world_size=2,
                        check_files=False)
    validate_run_config(_config("teacher.parallel.tensor=2", "teacher.parallel.pipeline=2"),
                        world_size=4, check_files=False)
    validate_run_config(_config("teacher.parallel.tensor=2", "teacher.offload=stream",
                                "eval.teacher=false"), world_size=2, check_files=False)
    validate_run_config(_config("teacher.parallel.tensor=2", "teacher.score_during_rollout=true",
                                "rollout.micro_batch_size=2"), world_size=2, check_files=False)
    validate_run_config(_config("teacher.parallel.tensor=2", "rollout.teacher_samples=2",
                                "imitation.weight=0.5"), world_size=2, check_files=False)


@pytest.mark.parametrize("over,world,match", [
    (["teacher.parallel.tensor=3"], 4, r"teacher.parallel.tensor \* teacher.parallel.pipeline "
                                       r"= 3 \* 1 = 3 does not divide the world size 4"),
    (["teacher.parallel.tensor=-1"], 2, "teacher.parallel.tensor must be 0"),
    (["teacher.parallel.virtual_pipeline=2"], 2, "teacher.parallel.virtual_pipeline=2 needs "
                                                 "teacher.parallel.pipeline >= 2"),
    (["parallel.tensor=2", "teacher.parallel.tensor=1", "rollout.prompts_per_step=2",
      "rollout.teacher_samples=2", "rollout.group_size=4"], 4,
     r"rollout.prompts_per_step = 2 is not divisible by the data-parallel size 4 of the teacher"),
    (["parallel.tensor=2", "teacher.parallel.tensor=1", "algorithm=sft_distill",
      "train.sft_batch_size=6"], 4, r"train.sft_batch_size = 6 is not divisible by the "
                                    r"data-parallel size 4 of the teacher"),
    (["parallel.tensor=2", "teacher.parallel.tensor=1", "rollout.prompts_per_step=6",
      "rollout.group_size=3", "train.micro_batch_size=1"], 4,
     r"rollout.prompts_per_step \* \(rollout.group_size \+ rollout.teacher_samples\) = 18 is "
     r"not divisible by the "
     r"data-parallel size 4 of the teacher"),
    (["parallel.tensor=2", "teacher.parallel.tensor=1", "teacher.parallel.pipeline=2",
      "teacher.parallel.virtual_pipeline=2", "train.micro_batch_size=16"], 2,
     "must be a multiple of teacher.parallel.pipeline=2"),
    (["algorithm=grpo", "teacher.parallel.tensor=2"], 2, "would be ignored"),
])
def test_own_layout_refusals_name_the_key(over, world, match):
    with pytest.raises(ValueError, match=match):
        validate_run_config(_config(*over), world_size=world, check_files=False)


def test_a_teacher_layout_that_cannot_hold_the_model_names_teacher_parallel():
    spec = get_preset("tiny-llama")  # 2 query groups
    problems = model_layout_problems(spec, tp=4, role="teacher", names=TEACHER_NAMES)
    assert problems[0].startswith("teacher.parallel.tensor: 4 does not divide "
                                  "teacher.num_query_groups: 2")
