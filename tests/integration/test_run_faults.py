"""Faults around a run's folder, with real `rlad train` processes and tiny models:

* a second run on a busy run_dir is refused, naming the first, which loses nothing; a
  lock left by a dead process is named as stale and taken over;
* a truncated shard of the latest checkpoint is named (file and size) and, with
  checkpoint.fallback (the default), the run resumes from the newest iteration that verifies;
* once a preemption signal arrives, the checkpoint comes before a scheduled evaluation,
  which runs after the resume instead.
A failure names the part: the lock (bookkeeping/run_lock.py), the manifest (models/checkpoint.py
verify), or the loop's order (train/loop.py)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tiny_runs import char_tokenizer, tiny_overrides

REPO = Path(__file__).resolve().parents[2]


def _command(tmp_path, run_dir, *extra):
    empty = tmp_path / "empty.yaml"
    empty.write_text("{}\n")
    over = tiny_overrides(char_tokenizer(tmp_path), run_dir, "grpo")
    return [sys.executable, "-m", "rlad_megatron.cli", "train", str(empty), *over,
            "eval.at_start=false", "eval.num_prompts=2", *extra]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _run(tmp_path, run_dir, *extra):
    return subprocess.run(_command(tmp_path, run_dir, *extra), cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=600)


def _steps(run_dir: Path) -> list[int]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["step"] for line in lines if "loss/grpo" in line]


def _wait_for(predicate, what: str, timeout: float = 300):
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_a_busy_run_dir_is_refused_and_a_stale_lock_is_taken_over(tmp_path):
    run = tmp_path / "run"
    lock = run / ".rlad_lock"
    first = subprocess.Popen(_command(tmp_path, run, "train.steps=10", "checkpoint.save_every=1"),
                             cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: lock.exists() and lock.read_text().strip(), "the first run's lock")
    second = _run(tmp_path, run, "train.steps=10", "checkpoint.save_every=1")
    assert second.returncode == 2, second.stderr[-2000:]
    assert "is in use by another run" in second.stderr
    assert f"pid {first.pid}" in second.stderr and "Traceback" not in second.stderr
    out, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-2000:]
    assert _steps(run) == list(range(1, 11))           # the first run lost nothing
    assert lock.read_text() == ""                       # released: empty, not stale
    # a process that died holding the lock (its flock is gone, its name is not)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock.write_text(json.dumps({"pid": dead.pid, "host": "node7", "started": "yesterday"}))
    third = _run(tmp_path, run, "train.steps=11")
    assert third.returncode == 0, third.stderr[-2000:]
    assert f"taking over a stale lock (pid {dead.pid} on host node7" in third.stderr


def test_a_truncated_latest_checkpoint_is_named_and_falls_back(tmp_path):
    run = tmp_path / "run"
    done = _run(tmp_path, run, "train.steps=2", "checkpoint.save_every=1", "checkpoint.keep_last=2")
    assert done.returncode == 0, done.stderr[-2000:]
    shard = max((run / "checkpoints" / "iter_0000002").glob("*.distcp"),
                key=lambda f: f.stat().st_size)
    size = shard.stat().st_size
    with open(shard, "r+b") as f:
        f.truncate(size // 2)
    refused = _run(tmp_path, run, "train.steps=3", "checkpoint.fallback=false")
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert f"{shard} has {size // 2} bytes, the manifest says {size}" in refused.stderr
    assert "checkpoint.fallback=true" in refused.stderr and "Traceback" not in refused.stderr
    resumed = _run(tmp_path, run, "train.steps=3")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "falling back to iteration 1" in resumed.stderr
    assert "iter_0000001 at step 1" in resumed.stdout
    assert _steps(run) == [1, 2, 3]                     # step 2 trained again, then 3
    # an architecture that does not match a checkpoint is named from its spec file
    # before any model is built (it was megatron's "Global shape mismatch" naming neither)
    ckpt = run / "checkpoints"
    wrong = _run(tmp_path, tmp_path / "other", f"student.checkpoint={ckpt}",
                 "student.random_init=false", "student.spec.num_layers=3")
    assert wrong.returncode == 2, wrong.stderr[-2000:]
    assert (f"student: the configured architecture does not match student.checkpoint {ckpt}: "
            "num_layers: configured 3, checkpoint 2") in wrong.stderr


def test_preemption_checkpoints_before_a_scheduled_evaluation(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen(_command(tmp_path, run, "train.steps=30", "eval.every=1"), cwd=REPO,
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: (run / "metrics.jsonl").exists() and _steps(run), "the first step")
    proc.send_signal(signal.SIGUSR1)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]
    step = int(out.split("preempted; checkpoint at step ")[1].split()[0])
    # every step is an evaluation step here: the preempted one was saved, not evaluated
    assert (run / "checkpoints" / f"iter_{step:07d}").is_dir()
    assert not (run / "eval" / f"step_{step:07d}.json").exists()
    assert (step == 1) or (run / "eval" / f"step_{step - 1:07d}.json").exists()
    resumed = _run(tmp_path, run, f"train.steps={step + 1}", "eval.every=1")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert (run / "eval" / f"step_{step:07d}.json").exists()   # evaluated after the resume


def test_over_long_prompts_are_found_when_the_data_loads(tmp_path):
    """Item 6: one over-long prompt among many used to kill a run mid-training, and
    data.on_bad_row=skip did not drop it. A context of 16 positions holds a two-term chain_sum
    prompt (5 tokens) + 10 new tokens, not a three-term one (7 tokens)."""
    run = tmp_path / "run"
    small = ["student.spec.max_position_embeddings=16", "teacher.spec.max_position_embeddings=16"]
    refused = _run(tmp_path, run, "train.steps=2", *small)
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "prompt of 7 tokens does not fit the context: 7 + 10 new tokens > " \
           "max_position_embeddings 16" in refused.stderr
    assert "data.on_bad_row=skip" in refused.stderr and "Traceback" not in refused.stderr
    assert not (run / "checkpoints" / "iter_0000001").exists()
    skipped = _run(tmp_path, run, "train.steps=2", "data.on_bad_row=skip", *small)
    assert skipped.returncode == 0, skipped.stderr[-2000:]
    dropped = int(skipped.stdout.split(" over-long prompt(s)")[0].rsplit(" ", 1)[1])
    assert 0 < dropped < 72 and _steps(run) == [1, 2]


_PLANT = """
import os, sys, torch
class Planted:
    def __reduce__(self):
        return (os.system, ("touch " + sys.argv[2],))
torch.save({"torch": torch.zeros(3), "evil": Planted()}, sys.argv[1])
"""


def test_a_planted_pickle_in_a_checkpoint_is_not_executed_on_resume(tmp_path):
    """Item 2 through `rlad train`: a rank_state_00000.pt whose object runs a shell command when
    unpickled, planted in the latest checkpoint with its manifest updated to match (as an
    attacker would), is read as data on resume: the command never runs, the run resumes with a
    warning (RNG re-seeded) and finishes."""
    from rlad_megatron.models import checkpoint as mckpt

    run = tmp_path / "run"
    first = _run(tmp_path, run, "train.steps=2")
    assert first.returncode == 0, first.stderr[-2000:]
    latest = run / "checkpoints" / "iter_0000002"
    payload = latest / "rank_state_00000.pt"
    assert payload.exists()
    marker = tmp_path / "pwned"
    subprocess.run([sys.executable, "-c", _PLANT, str(payload), str(marker)], check=True)
    mckpt.write_manifest(latest)                       # sizes match: verification passes
    resumed = _run(tmp_path, run, "train.steps=3")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert not marker.exists(), "the planted pickle was executed"
    assert "resumed from" in resumed.stdout + resumed.stderr
    assert "is not a plain RNG state" in resumed.stdout + resumed.stderr
    assert _steps(run)[-1] == 3
