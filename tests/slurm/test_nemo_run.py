"""rlad_megatron/launch/nemo_run.py: a real `rlad train` through nemo-run's SlurmExecutor (on the
local cluster, LocalTunnel) and LocalExecutor (torchrun), the layout check before submission,
and the sbatch script nemo-run renders for the recipes.

nemo-run (pip install nemo-run==0.11.1 'leptonai<0.47', the `launch` extra) must be installed.
A failure means a recipe cannot be submitted through nemo-run as its users expect, or that a
layout that cannot run would be submitted anyway.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

try:
    import nemo_run  # noqa: F401
except ImportError as e:      # not a skip: CI must install the launch extra
    raise ImportError("tests/slurm needs nemo-run: "
                      "pip install nemo-run==0.11.1 'leptonai<0.47'") from e

from rlad_megatron.launch import nemo_run as nr


@pytest.fixture
def nemo_home(tmp_path, monkeypatch, job_env, stdin_devnull):
    """nemo-run's home in tmp_path; jobs find the venv's python and torchrun first on PATH."""
    from nemo_run.config import get_nemorun_home, set_nemorun_home

    old = get_nemorun_home()
    # not ".../nemo_run": without a container nemo-run 0.11.1 replaces every "/nemo_run" in the
    # sbatch script by the job directory, paths included
    home = tmp_path / "nemorun_home"
    set_nemorun_home(str(home))
    monkeypatch.setenv("PATH", job_env["PATH"])
    yield home
    set_nemorun_home(old)


def _log(local_dir: str) -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted(Path(local_dir).rglob("*.out"))
                     + sorted(Path(local_dir).rglob("*.log")))


def test_slurm_executor_local_tunnel_runs_rlad_train(cluster, nemo_home, tiny_run, tmp_path):
    config, overrides = tiny_run(steps=2)
    task = nr.from_yaml(config, overrides)
    executor = nr.slurm_executor(nodes=2, gpus_per_node=1, time="00:15:00")
    status = nr.launch(task, executor, name="tiny", gpu_memory_gib=80)["tiny"]
    log = _log(status["local_dir"])
    assert str(status["status"]) == "SUCCEEDED", log[-4000:]
    assert "world 2 (gloo)" in log
    checkpoints = tmp_path / "run" / "checkpoints"
    assert (checkpoints / "latest_checkpointed_iteration.txt").read_text().strip() == "2"
    assert [r["State"] for r in cluster.sacct(status["job_id"])] == ["COMPLETED"]


def test_local_executor_torchrun_runs_rlad_train(nemo_home, tiny_run, tmp_path):
    config, overrides = tiny_run(steps=2)
    status = nr.launch(nr.from_yaml(config, overrides), nr.local_executor(gpus=2),
                       name="tiny_local")["tiny_local"]
    log = _log(status["local_dir"])
    assert str(status["status"]) == "SUCCEEDED", log[-4000:]
    assert "world 2 (gloo)" in log
    checkpoints = tmp_path / "run" / "checkpoints"
    assert (checkpoints / "latest_checkpointed_iteration.txt").read_text().strip() == "2"


def test_plan_check_refuses_before_anything_is_submitted(nemo_home, tiny_run):
    config, overrides = tiny_run(steps=2, **{"parallel.tensor": 2})
    executor = nr.slurm_executor(nodes=2, gpus_per_node=1)
    with pytest.raises(ValueError, match="parallel.tensor: 2 does not divide the GPUs per node 1"):
        nr.launch(nr.from_yaml(config, overrides), executor, name="refused")
    assert not list(nemo_home.rglob("*_sbatch.sh"))
    with pytest.raises(ValueError, match=r"TP=8 PP=2 DP=1 needs .* GiB more than the 40 GiB"):
        nr.launch(nr.llama31_405b_to_8b(), nr.slurm_executor(nodes=2), name="r", dryrun=True,
                  gpu_memory_gib=40)


@pytest.mark.parametrize("launcher", [None, "torchrun"], ids=["srun-per-rank", "torchrun"])
def test_405b_recipe_renders_a_production_sbatch_script(nemo_home, launcher):
    executor = nr.slurm_executor(account="proj", partition="batch", nodes=8, gpus_per_node=8,
                                 container_image="nvcr.io/nvidia/nemo:25.09",
                                 container_mounts=["/lustre:/lustre"], launcher=launcher)
    out = nr.launch(nr.llama31_405b_to_8b(), executor, name="r405b", dryrun=True)
    script = next(Path(out["exp_dir"]).rglob("*_sbatch.sh")).read_text()
    for line in ("#SBATCH --nodes=8", "#SBATCH --gpus-per-node=8", "#SBATCH --signal=USR1@120",
                 "#SBATCH --exclusive", "#SBATCH --mem=0", "#SBATCH --account=proj"):
        assert line in script, script
    assert "--container-image nvcr.io/nvidia/nemo:25.09" in script
    assert "--container-mounts /lustre:/lustre" in script
    if launcher == "torchrun":
        assert "#SBATCH --ntasks-per-node=1" in script
        assert "--nnodes 8 --nproc-per-node 8" in script
    else:
        assert "#SBATCH --ntasks-per-node=8" in script and "torchrun" not in script
        assert "export MASTER_ADDR=$head_node_ip MASTER_PORT=" in script
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)


def test_command_line_factory_and_overrides(tmp_path):
    env = {**os.environ, "NEMORUN_HOME": str(tmp_path), "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "rlad_megatron.launch", "--factory",
                        "qwen3_32b_to_8b", "cfg.train.steps=7", "cfg.rollout.group_size=16",
                        "run.executor=slurm", "run.executor.nodes=4",
                        "run.executor.account=proj", "--dryrun", "--yes"],
                       env=env, cwd=REPO, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                       timeout=300)
    out = p.stdout + p.stderr
    assert p.returncode == 0 and "Unexpected error" not in out, out[-3000:]
    assert "rlad_megatron.launch.nemo_run:rlad_train" in out
    assert "steps=7" in out and "group_size=16" in out and "preset='qwen3-32b'" in out
    assert "account='proj'" in out and "nodes=4" in out and "ntasks_per_node=8" in out
