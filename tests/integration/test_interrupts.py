"""Interrupts with real processes and tiny models (issue 26 items 9 and 13):

* Ctrl-C (SIGINT) to `rlad train` finishes the step, checkpoints and exits 0, like SIGTERM (it
  printed a traceback and lost the work since the last save);
* SIGINT to `rlad reproduce` ends it with one line saying how to resume, exit 130, no
  KeyboardInterrupt traceback;
* a kill -9 of the torchrun launcher: its worker notices (bookkeeping/preemption.py LauncherWatch),
  checkpoints and exits instead of training on as an orphan.
A failure points at bookkeeping/preemption.py (signals, the watch) or cli.py (reproduce's exit)."""

import os
import signal
import subprocess
import sys
import time

from tiny_runs import TINY_RECIPE
from test_run_faults import REPO, _command, _env, _steps, _wait_for

from rlad_megatron.models import checkpoint as mckpt


def test_ctrl_c_to_rlad_train_checkpoints_and_exits_zero(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen(_command(tmp_path, run, "train.steps=40"), cwd=REPO, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: (run / "metrics.jsonl").exists() and _steps(run), "the first step")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert "received SIGINT: finishing the current step" in err and "Traceback" not in err
    step = int(out.split("preempted; checkpoint at step ")[1].split()[0])
    assert 1 <= step < 40 and mckpt.latest_iteration(run / "checkpoints") == step


def test_ctrl_c_to_rlad_reproduce_exits_cleanly(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(TINY_RECIPE.format(cache=tmp_path / "cache", run=tmp_path / "run"))
    proc = subprocess.Popen([sys.executable, "-m", "rlad_megatron.cli", "reproduce",
                             str(recipe), "--quick"], cwd=REPO, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:  # the runs are announced before the preparation starts
        if line.startswith("reproduce: "):
            break
    time.sleep(3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-3000:]
    assert err.strip().splitlines()[-1].startswith("rlad reproduce: interrupted; the training "
                                                   "runs stopped with it"), err[-3000:]
    assert "KeyboardInterrupt" not in err


def test_a_worker_whose_torchrun_launcher_was_killed_checkpoints_and_stops(tmp_path):
    run = tmp_path / "run"
    cmd = _command(tmp_path, run, "train.steps=400")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
           "1", *cmd[1:]]
    with open(tmp_path / "out.log", "w") as log:
        launcher = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=log,
                                    stderr=subprocess.STDOUT)
    lock = run / ".rlad_lock"
    _wait_for(lambda: (run / "metrics.jsonl").exists() and _steps(run), "the first step")
    worker = int(__import__("json").loads(lock.read_text())["pid"])
    os.kill(launcher.pid, signal.SIGKILL)
    launcher.wait()

    def gone():
        try:
            os.kill(worker, 0)
            return False
        except ProcessLookupError:
            return True
    _wait_for(gone, "the orphaned worker to stop", timeout=120)
    text = (tmp_path / "out.log").read_text()
    assert f"the launcher (pid {launcher.pid}) is gone: checkpoint and exit" in text, text[-3000:]
    step = int(text.split("preempted; checkpoint at step ")[1].split()[0])
    assert step < 400 and mckpt.latest_iteration(run / "checkpoints") == step
    assert lock.read_text() == ""                       # released: a relaunch can resume
