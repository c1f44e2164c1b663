"""A checkpoint's integrity with real `rlad train` processes and tiny models (issue 26):

* item 7: a shard corrupted without changing its size is named by its sha256 (the manifest's) and
  the run falls back to the newest iteration that verifies; with verification off, torch's own
  error (a CheckpointException, which derives from BaseException) is named with the folder;
* item 8: a second run with another run_dir but the first run's checkpoint.dir is refused,
  naming the holder;
* item 10: a full disk is named "no space left on device" with the folder (a 1 MiB tmpfs in a
  user+mount namespace; skipped where unshare cannot make one).
A failure names the item: the manifest (models/checkpoint_files.py), the lock
(bookkeeping/run_lock.py RunLocks) or the save (models/checkpoint.py)."""

import shutil
import subprocess

import pytest

from test_run_faults import REPO, _command, _env, _run, _steps, _wait_for


def _corrupt(shard):
    data = bytearray(shard.read_bytes())
    for i in range(64):  # its header: torch cannot read it (the middle would load silently)
        data[i] ^= 0xFF
    shard.write_bytes(bytes(data))


def test_a_corrupted_shard_of_the_same_size_is_named_and_falls_back(tmp_path):
    run = tmp_path / "run"
    done = _run(tmp_path, run, "train.steps=2", "checkpoint.save_every=1", "checkpoint.keep_last=2")
    assert done.returncode == 0, done.stderr[-2000:]
    latest = run / "checkpoints" / "iter_0000002"
    shard = max(latest.glob("*.distcp"), key=lambda f: f.stat().st_size)
    size = shard.stat().st_size
    _corrupt(shard)
    assert shard.stat().st_size == size
    refused = _run(tmp_path, run, "train.steps=3", "checkpoint.fallback=false")
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert f"{shard} has the right size but not the contents the manifest records" \
        in refused.stderr and "Traceback" not in refused.stderr
    unverified = _run(tmp_path, run, "train.steps=3", "checkpoint.verify_checksums=false")
    assert unverified.returncode == 2, unverified.stderr[-2000:]
    assert f"checkpoint {latest} could not be read" in unverified.stderr
    assert "Traceback" not in unverified.stderr
    resumed = _run(tmp_path, run, "train.steps=3")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "falling back to iteration 1" in resumed.stderr
    assert _steps(run) == [1, 2, 3]


def test_a_second_run_on_a_live_runs_checkpoint_dir_is_refused(tmp_path):
    ckpt = tmp_path / "shared_ckpt"
    first = subprocess.Popen(_command(tmp_path, tmp_path / "a", "train.steps=8",
                                      "checkpoint.save_every=1", f"checkpoint.dir={ckpt}"),
                             cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    lock = ckpt / ".rlad_lock"
    _wait_for(lambda: lock.exists() and lock.read_text().strip(), "the first run's lock")
    second = _run(tmp_path, tmp_path / "b", "train.steps=8", f"checkpoint.dir={ckpt}")
    out, err = first.communicate(timeout=600)
    assert second.returncode == 2, second.stderr[-2000:]
    assert f"checkpoint.dir: {ckpt} is in use by another run (pid {first.pid}" in second.stderr
    assert "Traceback" not in second.stderr
    assert first.returncode == 0, err[-2000:]
    assert _steps(tmp_path / "a") == list(range(1, 9))


def test_a_full_disk_is_named_with_the_folder(tmp_path):
    if shutil.which("unshare") is None or subprocess.run(
            ["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=1m tmpfs {tmp_path}"],
            capture_output=True).returncode != 0:
        pytest.skip("no user+mount namespace here to make a small tmpfs")
    small = tmp_path / "small"
    small.mkdir()
    cmd = _command(tmp_path, tmp_path / "run", "train.steps=1", f"checkpoint.dir={small}/ckpt")
    script = (f"mount -t tmpfs -o size=256k tmpfs {small} && dd if=/dev/zero of={small}/fill "
              f"bs=1k count=200 2>/dev/null; exec \"$@\"")
    full = subprocess.run(["unshare", "-rm", "sh", "-c", script, "sh", *cmd], cwd=REPO,
                          env=_env(), capture_output=True, text=True, timeout=600)
    assert full.returncode == 2, full.stderr[-3000:]
    last = full.stderr.strip().splitlines()[-1]  # megatron logs its writer's error before
    assert last.startswith(f"rlad: error: no space left on device writing the checkpoint "
                           f"{small}/ckpt/.tmp_iter_0000001 ("), full.stderr[-3000:]
