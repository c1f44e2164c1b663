"""Crash safety and exact resume of `rlad train` (2 ranks, TP=2, real processes).

Run A trains 6 steps uninterrupted. Run B is killed with SIGKILL while it writes its step-4
checkpoint (its .tmp_iter_0000004 folder exists); the step-2 checkpoint must then still be the
latest and loadable. Run C resumes B's folder and trains to step 6; its final weights and Adam
state must equal A's bit for bit. A failure here means a checkpoint is not atomic or some state
(optimizer, scheduler, data position, RNG, rollout seed) is not restored exactly.

Why bit for bit holds on any CPU: A and C run the same kernels on the same shapes in the same
order on one machine (a resume replays no arithmetic differently), so any CPU's round-off is the
same in both; only state that is not restored exactly can make them differ."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from tiny_runs import char_tokenizer, tiny_overrides

from rlad_megatron.models import checkpoint as mckpt  # noqa: E402

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
            "-m", "rlad_megatron.cli", "train"]


def _command(tmp: Path, name: str) -> list[str]:
    over = tiny_overrides(char_tokenizer(tmp), tmp / name, "rlad", steps=6)
    return TORCHRUN + [_config_file(tmp)] + over + [
        "parallel.tensor=2", "checkpoint.save_every=2", "checkpoint.keep_last=3"]


def _config_file(tmp: Path) -> str:
    path = tmp / "base.yaml"
    path.write_text("eval:\n  num_prompts: 4\n")
    return str(path)


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _weights(folder: Path, tmp: Path) -> dict:
    out = tmp / f"{folder.parent.parent.name}_{folder.name}.pt"
    dcp_to_torch_save(str(folder), str(out))
    state = torch.load(out, weights_only=False)
    return {k: v for k, v in state.items() if torch.is_tensor(v) and "_extra_state" not in k}


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (Linux /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def test_sigkill_during_checkpoint_then_resume_equals_uninterrupted(tmp_path):
    a = subprocess.run(_command(tmp_path, "A"), env=_env(), capture_output=True, text=True,
                       timeout=600)
    assert a.returncode == 0, a.stderr[-3000:]

    b = subprocess.Popen(_command(tmp_path, "B"), env=_env(), stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, start_new_session=True)
    root = tmp_path / "B" / "checkpoints"
    deadline = time.time() + 600
    while not (root / ".tmp_iter_0000004").exists():
        assert b.poll() is None, (f"run B ended before its step-4 checkpoint: "
                                  f"{b.stderr.read()[-2000:]}")
        assert time.time() < deadline, "run B never started its step-4 checkpoint"
        time.sleep(0.01)
    # torchrun starts each worker in a session of its own: kill them too (else they notice
    # their launcher's death and checkpoint on their own, bookkeeping/preemption.py LauncherWatch)
    workers = _children(b.pid)
    os.killpg(b.pid, signal.SIGKILL)
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    b.wait(timeout=60)
    assert mckpt.latest_iteration(root) == 2, "the pointer must still name the step-2 checkpoint"
    assert not (root / "iter_0000004").exists()

    c = subprocess.run(_command(tmp_path, "B"), env=_env(), capture_output=True, text=True,
                       timeout=600)
    assert c.returncode == 0, c.stderr[-3000:]
    assert "resumed from" in c.stdout + c.stderr
    assert mckpt.latest_iteration(root) == 6

    wa = _weights(tmp_path / "A" / "checkpoints" / "iter_0000006", tmp_path)
    wc = _weights(root / "iter_0000006", tmp_path)
    assert "embedding.word_embeddings.weight" in wa and sorted(wa) == sorted(wc)
    assert any(k.startswith("optimizer.state.exp_avg.") for k in wa)
    different = [k for k in wa if not torch.equal(wa[k], wc[k])]
    assert not different, ("resumed weights/optimizer state differ from the uninterrupted run: "
                           f"{different[:5]}")
    # and they did move during training
    w2 = _weights(root / "iter_0000002", tmp_path)
    assert any(not torch.equal(w2[k], wc[k]) for k in wc)
