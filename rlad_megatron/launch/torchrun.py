"""torchrun that exits 0 after a clean preemption save.

    python -m rlad_megatron.launch.torchrun [torchrun options] -m rlad_megatron.cli train CFG ...

takes exactly torchrun's arguments. Why a wrapper: torchrun's agent turns SIGTERM into an
exception, forwards the signal to the workers, waits for them, and then exits 1 with a
traceback, even when every worker finished its step, saved its preemption checkpoint and
exited 0; SIGUSR1 (Slurm's `--signal` warning) kills the agent outright unless it is listed in
TORCHELASTIC_SIGNALS_TO_HANDLE. A scheduler or script that reads that exit status then treats a
clean preemption as a failure. This launcher

  * starts torchrun in its own session, with SIGUSR1 added to the signals its agent forwards and
    $RLAD_PREEMPTION_MARKER naming a fresh file (bookkeeping/preemption.py MARKER_ENV);
  * forwards the first SIGTERM, SIGUSR1 or SIGINT it receives to torchrun once (torchrun passes
    it to every worker; a repeated signal would abort the agent's graceful shutdown, so repeats
    are only reported);
  * exits with torchrun's status, except after a signal when the trainer wrote the marker, which
    it does only once its preemption checkpoint is complete on every rank: then it exits 0 and
    names the step and the checkpoint.

The srun path (slurm/rlad_train.sbatch, one task per rank) needs none of this: every rank exits
0 itself. The Slurm time limit's SIGKILL after KillWait still applies: the step plus the save
must fit in the warning time.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional, Sequence

from rlad_megatron.bookkeeping.preemption import MARKER_ENV

FORWARDED = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
AGENT_SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"


def _read_marker(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def agent_signal_args(torchrun_args: Sequence[str]) -> list[str]:
    """TORCHRUN_ARGS with SIGUSR1 among the signals the agent forwards. Newer torch takes
    `--signals-to-handle`, which overrides the environment variable older versions read (both
    are set); a list the user gave is kept as given."""
    from torch.distributed.run import get_args_parser

    flags = [f for f in get_args_parser()._option_string_actions if "signals" in f]
    given = any(a.split("=")[0] in flags for a in torchrun_args if a.startswith("--"))
    if not flags or given:
        return list(torchrun_args)
    return ["--signals-to-handle", AGENT_SIGNALS, *torchrun_args]


def launch(torchrun_args: Sequence[str]) -> int:
    """Run torchrun with TORCHRUN_ARGS; returns the exit status this launcher should give."""
    with tempfile.TemporaryDirectory(prefix="rlad_torchrun_") as tmp:
        marker = Path(tmp) / "preempted.json"
        env = {**os.environ, MARKER_ENV: str(marker),
               "TORCHELASTIC_SIGNALS_TO_HANDLE": AGENT_SIGNALS}
        proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run",
                                 *agent_signal_args(torchrun_args)],
                                env=env, start_new_session=True)
        received: list[signal.Signals] = []

        def forward(signum, frame):
            sig = signal.Signals(signum)
            if received:
                print(f"rlad torchrun: {sig.name} again; the workers are already saving after "
                      f"{received[0].name}", file=sys.stderr, flush=True)
                return
            received.append(sig)
            print(f"rlad torchrun: {sig.name}: passed to the workers, which checkpoint and exit",
                  file=sys.stderr, flush=True)
            proc.send_signal(signal.SIGTERM if sig == signal.SIGINT else sig)

        previous = {sig: signal.signal(sig, forward) for sig in FORWARDED}
        try:
            rc = proc.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        saved = _read_marker(marker)
    if rc < 0:  # torchrun itself died of a signal: the shell's convention
        rc = 128 - rc
    if saved is not None and received:
        if rc != 0:
            print(f"rlad torchrun: preempted by {received[0].name}; the checkpoint of step "
                  f"{saved['step']} in {saved['checkpoint_dir']} is complete, so the exit status "
                  f"is 0 (torchrun's own was {rc}: its agent always fails after a signal)",
                  file=sys.stderr, flush=True)
        return 0
    if received and rc != 0:
        print(f"rlad torchrun: {received[0].name} arrived but no preemption checkpoint was "
              f"completed; exit status {rc}", file=sys.stderr, flush=True)
    return rc


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(__doc__)
        sys.exit(0 if args else 2)
    sys.exit(launch(args))


if __name__ == "__main__":
    main()
