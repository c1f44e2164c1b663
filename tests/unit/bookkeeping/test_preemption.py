"""Preemption: signals raise a flag without killing the process, ranks agree on it, and a
signalled training loop finishes its step, checkpoints and exits 0.

Start here when a Slurm job is killed instead of requeued.
"""

import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch.distributed as dist

from rlad_megatron.bookkeeping.preemption import PreemptionHandler

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGTERM])
def test_signal_sets_the_flag_and_logs_once(sig):
    messages = []
    with PreemptionHandler(log=messages.append) as handler:
        assert not handler.requested and not handler.stop_agreed()
        assert signal.getsignal(sig) == handler._on_signal  # else the kill ends pytest
        os.kill(os.getpid(), sig)
        os.kill(os.getpid(), sig)
        assert handler.requested and handler.received == sig
        assert handler.stop_agreed()  # no process group: the local flag
    assert len(messages) == 1 and sig.name in messages[0]


def test_restore_puts_back_the_previous_handlers():
    def mine(signum, frame):
        pass

    old_usr1 = signal.signal(signal.SIGUSR1, mine)
    old_term = signal.getsignal(signal.SIGTERM)
    try:
        handler = PreemptionHandler(log=None).install()
        assert signal.getsignal(signal.SIGUSR1) == handler._on_signal
        assert signal.getsignal(signal.SIGTERM) == handler._on_signal
        handler.restore()
        assert signal.getsignal(signal.SIGUSR1) is mine
        assert signal.getsignal(signal.SIGTERM) == old_term
    finally:
        signal.signal(signal.SIGUSR1, old_usr1)


def test_only_the_configured_signals_are_handled():
    before = signal.getsignal(signal.SIGTERM)
    with PreemptionHandler([signal.SIGUSR1], log=None):
        assert signal.getsignal(signal.SIGTERM) == before


def _rank(rank, store, out_dir, signalled_rank):
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    with PreemptionHandler(log=None) as handler:
        first = handler.stop_agreed()
        if rank == signalled_rank:
            os.kill(os.getpid(), signal.SIGUSR1)
        second = handler.stop_agreed()
    dist.destroy_process_group()
    Path(out_dir, f"rank{rank}").write_text(f"{first} {handler.requested} {second}")


def test_stop_agreed_all_reduces_over_ranks(tmp_path):
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_rank, args=(r, tmp_path / "store", tmp_path, 1)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert (tmp_path / "rank0").read_text() == "False False True"  # told by rank 1
    assert (tmp_path / "rank1").read_text() == "False True True"


LOOP = """
import sys, time
from pathlib import Path
from rlad_megatron.bookkeeping.preemption import PreemptionHandler

out = Path(sys.argv[1])
with PreemptionHandler() as preempt:
    (out / "ready").touch()
    for step in range(10_000):
        (out / f"start_{step}").touch()
        time.sleep(0.2)                      # the step
        (out / f"done_{step}").touch()
        if preempt.stop_agreed():
            (out / "checkpoint").write_text(str(step))
            break
sys.exit(0)
"""


def test_sigterm_finishes_the_step_checkpoints_and_exits_zero(tmp_path):
    script = tmp_path / "loop.py"
    script.write_text(textwrap.dedent(LOOP))
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path)], env=env, cwd=REPO,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "ready").exists():
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "the loop did not start"
            time.sleep(0.05)
        time.sleep(0.3)  # land in the middle of a step
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    stderr = proc.stderr.read()
    assert rc == 0, stderr
    assert "received SIGTERM" in stderr
    last = int((tmp_path / "checkpoint").read_text())
    assert (tmp_path / f"done_{last}").exists() and not (tmp_path / f"start_{last + 1}").exists()


def test_a_planted_rank_state_pickle_is_not_executed(tmp_path, caplog):
    """Resuming must not unpickle arbitrary objects from rank_state_*.pt (with
    weights_only=False a planted object's __reduce__ ran): read_rank_state refuses anything but
    tensors and plain data."""
    import logging
    import os

    import torch

    from rlad_megatron.bookkeeping.checkpoint import read_rank_state

    marker = tmp_path / "pwned"

    class Planted:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "rank_state_00000.pt"
    torch.save({"torch": torch.zeros(3), "evil": Planted()}, path)
    with caplog.at_level(logging.WARNING, logger="rlad_megatron.checkpoint"):
        assert read_rank_state(path) is None
    assert not marker.exists()
    assert "is not a plain RNG state" in caplog.text and str(path) in caplog.text
    torch.save({"torch": torch.zeros(3), "python": (3, (1, 2), None)}, path)
    assert read_rank_state(path)["python"] == (3, (1, 2), None)
    assert read_rank_state(tmp_path / "missing.pt") is None


def test_ctrl_c_sets_the_flag_and_a_second_one_stops_at_once():
    """Issue 26 item 9: SIGINT saves like SIGTERM; a second Ctrl-C is the way out, unsaved."""
    messages = []
    with PreemptionHandler(log=messages.append) as handler:
        os.kill(os.getpid(), signal.SIGINT)
        assert handler.requested and handler.received == signal.SIGINT
        with pytest.raises(KeyboardInterrupt, match="second Ctrl-C"):
            os.kill(os.getpid(), signal.SIGINT)
    assert len(messages) == 1 and "Ctrl-C again: stop now, unsaved" in messages[0]
