"""One run per run directory: RUN_DIR/.rlad_lock, held for the run's life (and likewise
CHECKPOINT_DIR/.rlad_lock for its checkpoint.dir, `RunLocks`).

Two `rlad train` processes on one run_dir resume each other's steps and overwrite each other's
checkpoints and metrics (workers orphaned by a kill -9 of torchrun make this happen by accident).
Rank 0 takes an exclusive fcntl.flock on RUN_DIR/.rlad_lock before any model is built and writes
who holds it (pid, host, start time); a second run finds the lock taken and stops with an error
naming the holder. The lock is released on every exit path: explicitly at the end of the run or
on an error (train/loop.py, train/setup.py), and by the kernel when the holder dies, also by
kill -9. A lock file whose lock is free but which still names a holder was left by a process
that died without cleaning up: it is a stale lock, named as such and taken over.

flock works on local file systems and on NFSv4 / Lustre (which map it to POSIX byte-range locks);
on a file system without locking support the acquire fails with an error that says so.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Optional

log = logging.getLogger("rlad_megatron.train")

LOCK_NAME = ".rlad_lock"


class RunDirLock:
    """An acquired lock on a run directory; `release()` (idempotent) gives it back."""

    def __init__(self, path: Path, handle) -> None:
        self.path = path
        self._handle = handle

    @classmethod
    def acquire(cls, run_dir: str | Path, key: str = "run_dir") -> "RunDirLock":
        """Take the lock or raise ValueError naming the run that holds it (`key`: the setting
        that names the folder, for the message)."""
        path = Path(run_dir) / LOCK_NAME
        handle = open(path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _describe(_read(path))
            handle.close()
            if e.errno in (errno.EAGAIN, errno.EACCES):
                raise ValueError(
                    f"{key}: {run_dir} is in use by another run ({holder}; lock {path}). Wait "
                    f"for it to finish or stop it, or choose another {key}") from None
            raise ValueError(f"{key}: {run_dir}: the file system refused a lock on {path} "
                             f"({e.strerror}); {key} must be on a file system with locking"
                             ) from None
        previous = _read(path)
        if previous:
            log.warning("%s %s: taking over a stale lock (%s, no longer running)",
                        key, run_dir, _describe(previous))
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "started": time.strftime("%Y-%m-%d %H:%M:%S")}))
        handle.flush()
        return cls(path, handle)

    def release(self) -> None:
        if self._handle is None:
            return
        try:
            self._handle.seek(0)
            self._handle.truncate()  # an empty lock file is not stale
        finally:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None


class RunLocks:
    """The locks of one run: its run_dir and its checkpoint.dir (a second run with another
    run_dir but the same checkpoint.dir would resume the live run's checkpoints and trip on its
    temporary files). `release()` gives back every one."""

    def __init__(self, locks: list[RunDirLock]) -> None:
        self.locks = locks

    @classmethod
    def acquire(cls, run_dir: str | Path, checkpoint_dir: str | Path) -> "RunLocks":
        first = RunDirLock.acquire(run_dir, "run_dir")
        if Path(checkpoint_dir).resolve() == Path(run_dir).resolve():
            return cls([first])
        try:
            return cls([first, RunDirLock.acquire(checkpoint_dir, "checkpoint.dir")])
        except BaseException:
            first.release()
            raise

    def release(self) -> None:
        for lock in reversed(self.locks):
            lock.release()


def _read(path: Path) -> Optional[dict]:
    try:
        text = path.read_text().strip()
        return json.loads(text) if text else None
    except (OSError, ValueError):
        return {"pid": "?", "host": "?", "started": "?"}


def _describe(holder: Optional[dict]) -> str:
    if not holder:
        return "holder unknown"
    return (f"pid {holder.get('pid')} on host {holder.get('host')}, started "
            f"{holder.get('started')}")
