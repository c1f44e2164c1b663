"""tools/gpu_check.py section 5 (a whole `rlad train` RLAD run, reported per phase) kept ready to
run: the same function on CPU, fp32, tiny sizes, two steps. On a GPU it runs bf16 at RL_SIZES."""

import importlib.util
from pathlib import Path

import pytest

from distributed_helpers import process_group  # noqa: F401  (a world-1 group, removed after)

TOOL = Path(__file__).resolve().parents[3] / "tools" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_rl_loop_section_trains_on_policy_and_reports_each_phase(tmp_path, gpu_check):
    small = ("rollout.prompts_per_step=4", "rollout.group_size=4", "rollout.max_new_tokens=8",
             "train.micro_batch_size=4", "eval.num_prompts=4")
    report = gpu_check.rl_loop(tmp_path, local_spec=True, dtype="fp32", steps=2, sizes=small)
    phases = report["seconds_per_phase"]
    assert report["steps"] == 2 and report["losses_finite"], report
    assert {"time/rollout_s", "time/teacher_logprobs_s", "time/update_s",
            "time/step_s"} <= set(phases), phases
    assert "time/old_logprobs_s" not in phases and report["old_logprobs_pass"] == [0.0, 0.0]
    assert report["rollout_tokens_per_s"] > 0
    line = gpu_check._rl_result({"rl_local": report, "rl_te": "skipped"})
    assert "rl_local_rollout_tokens_per_s=" in line and "rl_te=skipped" in line, line
    from rlad_megatron.runtime import destroy_parallel
    destroy_parallel()
