"""slurm/rlad_train.sbatch and slurm/submit.sh on the local cluster, running a real `rlad train`.

Tiny CPU scale (gloo): 2 nodes x 1 rank, one fake GPU per node, a tiny student and teacher
(tests/tiny_runs.py). A failure here means the production script would not start, would lose
its checkpoints to the container, would not stop cleanly on the preemption warning, or would
not requeue and resume; the job log (printed in the assertion) usually says which.
"""

import subprocess
import time
from pathlib import Path

from conftest import REPO

SBATCH = REPO / "slurm" / "rlad_train.sbatch"
SUBMIT = REPO / "slurm" / "submit.sh"
TINY = ["--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=1", "--time=00:15:00"]


def _log(cluster, job_id: str) -> str:
    path = Path(cluster.job_info(job_id)["StdOut"])
    return path.read_text() if path.exists() else ""


def _latest(run_dir_or_ckpt: Path) -> str:
    return (run_dir_or_ckpt / "latest_checkpointed_iteration.txt").read_text().strip()


def test_submit_runs_rlad_train_on_two_nodes_in_a_container(cluster, job_env, tiny_run, tmp_path):
    # the checkpoints go to a path that exists only inside the "container": its mount
    host_ckpt, container_ckpt = tmp_path / "host_ckpt", tmp_path / "container_ckpt"
    host_ckpt.mkdir()
    container_ckpt.mkdir()
    config, overrides = tiny_run(steps=3, **{"checkpoint.dir": container_ckpt})
    env = {**job_env, "NODES": "2", "GPUS_PER_NODE": "1", "TIME_LIMIT": "00:15:00",
           "LOG_DIR": str(tmp_path / "logs"), "CONTAINER_IMAGE": "nvcr.io/nvidia/pytorch:25.09-py3",
           "CONTAINER_MOUNTS": f"{host_ckpt}:{container_ckpt}", "CONTAINER_WORKDIR": str(REPO)}
    p = subprocess.run([str(SUBMIT), config, *overrides], env=env, capture_output=True, text=True,
                       cwd=tmp_path, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "ok: TP=1 PP=1 DP=2 fits" in p.stdout               # the planner ran before sbatch
    job_id = p.stdout.strip().split()[-1]
    info = cluster.wait(job_id, timeout=600)
    log = _log(cluster, job_id)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", log[-3000:]
    assert "2 nodes x 1 ranks, master n1:" in log
    assert "ok: TP=1 PP=1 DP=2 fits" in log                    # the in-job layout check
    assert "world 2 (gloo)" in log and "rlad: done" in log
    assert '"last_step": 3' in log and "ranks exited with status 0" in log
    assert _latest(host_ckpt) == "3" and (host_ckpt / "iter_0000003").is_dir()
    assert not any(container_ckpt.iterdir()), "the bind mount was not used"
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text()
    assert '"step": 3' in metrics
    assert [r["State"] for r in cluster.sacct(job_id)] == ["COMPLETED"]


def test_preemption_signal_checkpoints_requeues_and_resumes(cluster, job_env, tiny_run, tmp_path):
    steps = 20
    config, overrides = tiny_run(steps=steps)          # no periodic checkpoint: save_every=0
    job_id = cluster.sbatch(SBATCH, config, *overrides, env=job_env,
                            options=[*TINY, f"--output={tmp_path}/%j.out"])
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 600
    while not (metrics.exists() and '"step": 1,' in metrics.read_text()):   # training started
        assert cluster.job_info(job_id)["JobState"] in ("PENDING", "RUNNING"), _log(cluster, job_id)
        assert time.time() < deadline, "training did not start"
        time.sleep(0.2)
    cluster.run("scancel", "--signal=USR1", "--batch", job_id)   # as --signal=B:USR1@120 does

    # a requeue passes through REQUEUED and PENDING, never a final state, so this waits for
    # the end of the last run
    info = cluster.wait(job_id, timeout=900)
    log = _log(cluster, job_id)
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", log[-4000:]
    assert "rlad_train: SIGUSR1: asking the ranks to checkpoint and stop" in log
    stopped = int(log.split("rlad: preempted; checkpoint at step ")[1].split()[0])
    assert 1 <= stopped < steps, log[-4000:]
    assert f"requeueing job {job_id}" in log
    assert f"rlad_train: job {job_id} run 2 " in log                    # the requeued run
    assert f"at step {stopped}" in log.split(" run 2 ")[1].split("rlad: done")[0]
    assert "resumed from" in log and f'"start_step": {stopped}' in log
    assert f'"last_step": {steps}' in log
    assert _latest(tmp_path / "run" / "checkpoints") == str(steps)
    runs = cluster.sacct(job_id)
    assert [r["State"] for r in runs] == ["REQUEUED", "COMPLETED"], runs


def test_layouts_that_do_not_fit_are_refused_before_and_inside_the_job(cluster, job_env,
                                                                       tiny_run, tmp_path):
    config, overrides = tiny_run(steps=2, **{"parallel.tensor": 2})   # TP=2 > 1 GPU per node
    before = cluster.run("squeue", "-h", "-o", "%i").split()
    env = {**job_env, "NODES": "2", "GPUS_PER_NODE": "1", "LOG_DIR": str(tmp_path / "logs")}
    p = subprocess.run([str(SUBMIT), config, *overrides], env=env, capture_output=True, text=True,
                       cwd=tmp_path, timeout=300)
    assert p.returncode == 2 and "submit.sh: not submitted" in p.stderr, p.stdout + p.stderr
    assert "parallel.tensor: 2 does not divide the GPUs per node 1" in p.stdout
    assert cluster.run("squeue", "-h", "-o", "%i").split() == before

    # sbatch'ed directly, the job checks again on its first node and starts no training
    job_id = cluster.sbatch(SBATCH, config, *overrides, env=job_env,
                            options=[*TINY, f"--output={tmp_path}/%j.out"])
    info = cluster.wait(job_id, timeout=300)
    log = _log(cluster, job_id)
    assert info["JobState"] == "FAILED" and info["ExitCode"] == "2:0", log
    assert "the layout check failed (exit 2); not starting" in log
    assert not (tmp_path / "run").exists()
