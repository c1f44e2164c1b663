"""Graceful preemption: SIGTERM, SIGUSR1 or SIGINT (Ctrl-C; a second Ctrl-C stops at once,
unsaved) -> finish the current step, checkpoint, exit 0. A worker of torchrun whose launcher
died (kill -9: torchrun starts each worker in a session of its own, so nothing else ends it)
notices within a second (`LauncherWatch`) and takes the same path instead of training on as
an orphan.

    with PreemptionHandler() as preempt:
        for step in run.steps():
            ...one whole step...
            if preempt.stop_agreed():              # collective: every rank calls it every step
                run.checkpoint.save(step)
                break                              # then exit 0
    # handlers restored here

The signal handler only sets a flag (and writes one line to stderr on rank 0); all the work
happens in the loop, between steps. `stop_agreed()` all-reduces the flag with MAX so that every
rank leaves at the same step even when only some of them were signalled.

The Slurm contract (the sbatch script's side, see slurm/):
  * `#SBATCH --signal=B:USR1@120` makes Slurm send SIGUSR1 to the batch shell 120 s before the
    time limit. The shell traps it and forwards it to the training step, e.g.
        trap 'kill -USR1 "$pid"' USR1
        srun ... rlad train ... & pid=$!
        wait "$pid"; wait "$pid"             # the first wait returns when the trap fires
    srun passes the signal on to every task, i.e. to every rank.
  * The trainer finishes its step, checkpoints, and exits 0.
  * The script then requeues the job (`scontrol requeue "$SLURM_JOB_ID"`), and the requeued job
    resumes from the latest checkpoint. Requeueing is the script's business, not the trainer's.
  * Scancel, a node drain or the time limit send SIGTERM (then SIGKILL after Slurm's KillWait):
    the same path, with less time. Make the step plus the checkpoint fit in the warning time.
  * Prefer one srun task per rank. Under torchrun the agent handles SIGTERM itself: it sends
    the signal to the workers and kills them 30 s later; SIGUSR1 reaches the workers only if it
    is added to TORCHELASTIC_SIGNALS_TO_HANDLE. And torchrun exits 1 with a traceback after a
    signal even when every worker saved and exited 0: launch through
    `python -m rlad_megatron.launch.torchrun` (launch/torchrun.py), which forwards both signals
    and exits 0 when the trainer left the marker below (MARKER_ENV) after its preemption save.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from typing import Callable, Optional, Sequence

import torch
import torch.distributed as dist

DEFAULT_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
MARKER_ENV = "RLAD_PREEMPTION_MARKER"
"""Environment variable naming a file the trainer writes once its preemption checkpoint is
complete (set by launch/torchrun.py; unset: nothing is written)."""


def write_preemption_marker(step: int, checkpoint_dir: str) -> None:
    """After the preemption checkpoint of STEP is complete on every rank: local rank 0 of each
    node writes {"step", "checkpoint_dir"} to $RLAD_PREEMPTION_MARKER (atomically), the
    launcher's evidence that the run stopped cleanly. Call it on every rank after the save."""
    path = os.environ.get(MARKER_ENV)
    if not path or os.environ.get("LOCAL_RANK", "0") != "0":
        return
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump({"step": step, "checkpoint_dir": str(checkpoint_dir)}, f)
    os.replace(tmp, path)


def _stderr_rank0(message: str) -> None:
    """os.write, not print: a handler may interrupt a print, and buffered IO is not reentrant."""
    if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
        return
    os.write(2, (message + "\n").encode())


class PreemptionHandler:
    """Turns the given signals into a flag that the training loop polls between steps.

    `requested` is this process's flag; `stop_agreed()` is the flag agreed over ranks.
    `install()` (or entering the `with` block) saves the current handlers and installs ours;
    `restore()` (or leaving the block) puts the saved ones back. Signal handlers can only be
    installed from the main thread (ValueError otherwise).
    """

    def __init__(self, signals: Sequence[int] = DEFAULT_SIGNALS, *,
                 log: Optional[Callable[[str], None]] = _stderr_rank0):
        self.signals = tuple(signal.Signals(s) for s in signals)
        self._log = log
        self._previous: dict[signal.Signals, object] = {}
        self._received: Optional[signal.Signals] = None

    def install(self) -> "PreemptionHandler":
        if threading.current_thread() is not threading.main_thread():
            raise ValueError("PreemptionHandler.install must run in the main thread "
                             "(Python delivers signals only there)")
        for sig in self.signals:
            if sig not in self._previous:
                self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._on_signal)
        return self

    def _on_signal(self, signum: int, frame) -> None:
        if self._received is None:
            self._received = signal.Signals(signum)
            if self._log is not None:
                again = " (Ctrl-C again: stop now, unsaved)" if signum == signal.SIGINT else ""
                self._log(f"[preemption] received {self._received.name}: finishing the current "
                          f"step, then checkpoint and exit{again}")
        elif signum == signal.SIGINT and self._received == signal.SIGINT:
            raise KeyboardInterrupt("second Ctrl-C: stopping without a checkpoint")

    @property
    def requested(self) -> bool:
        """True once one of the signals arrived in this process."""
        return self._received is not None

    @property
    def received(self) -> Optional[signal.Signals]:
        """The first signal that arrived, or None."""
        return self._received

    def stop_agreed(self, group=None) -> bool:
        """Whether any rank of `group` (default: the world) has the flag raised.

        A collective when torch.distributed is initialised: every rank of the group must call
        it at the same point of every step. Without a process group it is `requested`.
        """
        if not (dist.is_available() and dist.is_initialized()):
            return self.requested
        device = "cpu"
        if dist.get_backend(group) == "nccl":
            device = torch.device("cuda", torch.cuda.current_device())
        flag = torch.tensor([1 if self.requested else 0], dtype=torch.int32, device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=group)
        return bool(flag.item())

    def restore(self) -> None:
        """Put back the handlers that were installed before `install()`."""
        for sig, previous in self._previous.items():
            signal.signal(sig, signal.SIG_DFL if previous is None else previous)
        self._previous.clear()

    def __enter__(self) -> "PreemptionHandler":
        self.install()
        self._watch = LauncherWatch.start_if_torchrun()
        return self

    def __exit__(self, *exc) -> None:
        if getattr(self, "_watch", None) is not None:
            self._watch.stop()
        self.restore()


class LauncherWatch(threading.Thread):
    """A daemon thread that sends SIGTERM to its own process once the process's parent (the
    torchrun agent) is gone: the worker was re-parented, so getppid() changed. Polling, not
    prctl(PR_SET_PDEATHSIG), which fires when the *thread* that forked exits and is Linux-only."""

    def __init__(self, interval: float = 1.0):
        super().__init__(name="rlad-launcher-watch", daemon=True)
        self.parent = os.getppid()
        self.interval = interval
        self._stopped = threading.Event()

    @classmethod
    def start_if_torchrun(cls) -> Optional["LauncherWatch"]:
        """Started under torchrun only (TORCHELASTIC_RUN_ID): a plain process whose shell exits
        under nohup is meant to train on."""
        if not os.environ.get("TORCHELASTIC_RUN_ID"):
            return None
        watch = cls()
        watch.start()
        return watch

    def run(self) -> None:
        while not self._stopped.wait(self.interval):
            if os.getppid() != self.parent:
                _stderr_rank0(f"[preemption] the launcher (pid {self.parent}) is gone: "
                              "checkpoint and exit")
                os.kill(os.getpid(), signal.SIGTERM)
                return

    def stop(self) -> None:
        self._stopped.set()
