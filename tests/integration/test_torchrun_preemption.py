"""Preemption under torchrun: `python -m rlad_megatron.launch.torchrun`
runs `rlad train` on 2 ranks (TP=2); SIGTERM (a scancel or node drain) and SIGUSR1 (Slurm's
`--signal` warning) sent to the launcher make every rank finish its step, save, and the launcher
exit 0 naming the step, where torchrun itself exits 1 with a traceback (SIGTERM) or dies of the
signal (SIGUSR1). The checkpoint is then resumed. A failure points at launch/torchrun.py (exit
status, forwarding) or at bookkeeping/preemption.py write_preemption_marker."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tiny_runs import char_tokenizer, tiny_overrides

from rlad_megatron.models import checkpoint as mckpt  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def _command(tmp_path: Path, run_dir: Path, *extra: str) -> list[str]:
    empty = tmp_path / "empty.yaml"
    empty.write_text("{}\n")
    over = tiny_overrides(char_tokenizer(tmp_path), run_dir, "rlad")
    return [sys.executable, "-m", "rlad_megatron.launch.torchrun", "--nproc-per-node", "2",
            "-m", "rlad_megatron.cli", "train", str(empty), *over, "parallel.tensor=2",
            "eval.at_start=false", "eval.num_prompts=2", *extra]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _logged_steps(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return 0
    return sum('"loss/' in line for line in path.read_text().splitlines())


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1], ids=["SIGTERM", "SIGUSR1"])
def test_signal_to_the_launcher_saves_and_exits_zero(tmp_path, sig):
    run = tmp_path / "run"
    proc = subprocess.Popen(_command(tmp_path, run, "train.steps=40"), cwd=REPO, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while _logged_steps(run) < 1:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() < deadline, "no training step within 300 s"
        time.sleep(0.2)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    step = int(out.split("preempted; checkpoint at step ")[1].split()[0])
    assert 1 <= step < 40
    assert mckpt.latest_iteration(run / "checkpoints") == step
    assert f"the checkpoint of step {step}" in err and "exit status is 0" in err
    assert not (run / "summary.json").exists()         # stopped early, not finished

    resumed = subprocess.run(_command(tmp_path, run, f"train.steps={step + 1}"), cwd=REPO,
                             env=_env(), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout + resumed.stderr
    assert json.loads((run / "summary.json").read_text())["last_step"] == step + 1
