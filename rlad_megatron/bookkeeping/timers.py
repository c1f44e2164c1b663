"""Where a step's time and memory go: phase timers, tokens per second, memory, progress bars.

    timer = PhaseTimer()
    for step in steps:
        with timer.phase("rollout"):
            batch = generate(...)
        with timer.phase("teacher_logprobs"):
            ...
        metrics = {**timer.pop(), **memory_stats(),
                   "perf/tokens_per_s": throughput(n_tokens, seconds)}

Everything here measures this rank only; reducing over ranks (max time, max memory) is the
trainer's business.
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Any, Iterable, Iterator, Optional, Union

import psutil
import torch
from tqdm import tqdm

MIB = 1024 * 1024


class PhaseTimer:
    """Wall-clock seconds per named phase, accumulated until `pop()`.

    A phase entered several times in one step (one per micro-batch, say) adds up. `pop()`
    returns {"time/<phase>_s": seconds, ..., "time/step_s": seconds since the previous pop (or
    construction)} and starts the next step; "time/step_s" therefore also counts what ran
    outside any phase. With CUDA, each phase boundary synchronises the device (`cuda_sync`) so
    that asynchronous kernels are charged to the phase that launched them.
    """

    def __init__(self, prefix: str = "time/", *, cuda_sync: Optional[bool] = None):
        self.prefix = prefix
        self.cuda_sync = torch.cuda.is_available() if cuda_sync is None else cuda_sync
        self._totals: dict[str, float] = defaultdict(float)
        self._step_start = time.perf_counter()

    def _sync(self) -> None:
        if self.cuda_sync and torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the body of the `with` block under `name` (also when it raises)."""
        self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self._totals[name] += time.perf_counter() - start

    def elapsed(self, name: str) -> float:
        """Seconds spent in `name` so far in this step (0.0 if never entered)."""
        return self._totals.get(name, 0.0)

    def pop(self) -> dict[str, float]:
        """This step's times (see the class docstring), then reset for the next step."""
        now = time.perf_counter()
        out = {f"{self.prefix}{name}_s": seconds for name, seconds in self._totals.items()}
        out[f"{self.prefix}step_s"] = now - self._step_start
        self._totals = defaultdict(float)
        self._step_start = now
        return out


def throughput(tokens: float, seconds: float) -> float:
    """tokens / seconds; NaN when no time was measured (seconds <= 0)."""
    return float(tokens) / seconds if seconds > 0 else float("nan")


def _peak_rss_mib() -> float:
    try:
        import resource
    except ImportError:  # not on POSIX
        return psutil.Process().memory_info().rss / MIB
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MIB if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def memory_stats(*, reset_cuda_peak: bool = False) -> dict[str, float]:
    """This process's memory in MiB.

    Always "memory/rss_mib" (resident now) and "memory/peak_rss_mib" (resident high-water mark
    of the process). When CUDA is in use (available and initialised) also
    "memory/cuda_allocated_mib", "memory/cuda_reserved_mib" and "memory/cuda_max_allocated_mib"
    for the current device; `reset_cuda_peak` then restarts the CUDA high-water mark, so that
    the next call reports the peak of the next step only.
    """
    stats = {"memory/rss_mib": psutil.Process().memory_info().rss / MIB,
             "memory/peak_rss_mib": _peak_rss_mib()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        stats["memory/cuda_allocated_mib"] = torch.cuda.memory_allocated() / MIB
        stats["memory/cuda_reserved_mib"] = torch.cuda.memory_reserved() / MIB
        stats["memory/cuda_max_allocated_mib"] = torch.cuda.max_memory_allocated() / MIB
        if reset_cuda_peak:
            torch.cuda.reset_peak_memory_stats()
    return stats


LOG_INTERVAL_S = 60.0
"""Seconds between redraws of a progress bar whose stderr is not a terminal."""


def progress(iterable_or_total: Union[Iterable, int], *, desc: str = "", enabled: bool = True,
             **tqdm_kwargs: Any):
    """A tqdm bar on stderr over an iterable, or over `total` steps advanced with `update()`.

    `enabled` is false on every rank but rank 0 and when logging.progress is false; the bar is
    then tqdm's own disabled bar (same methods, no output). When stderr is not a terminal (a log
    file, a Slurm job's output) the bar is redrawn at most every LOG_INTERVAL_S, so a log holds a
    line a minute rather than thousands of carriage-return updates. Extra keyword arguments go
    to tqdm (`initial=` for a resumed run, `unit=`, `leave=`, `mininterval=`).
    """
    iterable, total = ((None, iterable_or_total) if isinstance(iterable_or_total, int)
                       else (iterable_or_total, tqdm_kwargs.pop("total", None)))
    if not sys.stderr.isatty():
        tqdm_kwargs["mininterval"] = max(tqdm_kwargs.get("mininterval", 0.1), LOG_INTERVAL_S)
    return tqdm(iterable, total=total, desc=desc, file=sys.stderr, dynamic_ncols=True,
                disable=not enabled, **tqdm_kwargs)
