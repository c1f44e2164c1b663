"""Every patch that lets megatron-core run on a CPU-only torch build, and nothing else.

Active only when CUDA is absent (`needed()`); on a GPU every function here is a no-op and
megatron runs untouched. Measured against megatron-core 0.16.1 (see docs/cpu.md):

  A  torch.cuda.current_device -> "cpu": megatron allocates scratch, DDP buffers and PP receive
     buffers with device=torch.cuda.current_device().
  B  a CPU RNG tracker in place of megatron's CUDA one: model_parallel_cuda_manual_seed calls
     torch.cuda.get_rng_state; attention forks the tracker on every forward.
  C  torch.cuda.synchronize -> no-op: the dist-checkpoint writer synchronizes before a save.
  D  `cuda_to_cpu()`, scoped: a TorchFunctionMode that rewrites device="cuda" and .cuda() to the
     CPU and can fake Tensor.type() == "torch.cuda.FloatTensor" (megatron's optimizer, grad
     clipping and pipeline schedules hard-code both). Used only around the calls that need it.

`intercepted_sites()` lists the megatron call sites that went through a shim; they are logged at
DEBUG level (logger "rlad_megatron.cpu_shims") when the process exits.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import sys
from collections import Counter

import torch
from torch.overrides import TorchFunctionMode

log = logging.getLogger("rlad_megatron.cpu_shims")
_SITES: Counter = Counter()
_APPLIED = False


def needed() -> bool:
    """True when megatron must be shimmed: a torch build or machine without CUDA."""
    return not torch.cuda.is_available()


def _record(kind: str, depth: int = 2) -> None:
    frame = sys._getframe(depth)
    _SITES[(kind, frame.f_code.co_filename.split("site-packages/")[-1], frame.f_lineno)] += 1


def intercepted_sites() -> dict[tuple[str, str, int], int]:
    """(shim kind, file, line) -> count of megatron call sites that went through a shim."""
    return dict(_SITES)


def _log_sites() -> None:
    if _SITES and log.isEnabledFor(logging.DEBUG):
        for (kind, path, line), n in sorted(_SITES.items()):
            log.debug("cpu shim %-16s %s:%d x%d", kind, path, line, n)


def _current_device():
    _record("current_device")
    return "cpu"


def _synchronize(*args, **kwargs):
    _record("synchronize")


def apply() -> bool:
    """Install the global shims A and C once. Returns whether shims are active."""
    global _APPLIED
    if not needed():
        return False
    if not _APPLIED:
        torch.cuda.current_device = _current_device
        torch.cuda.synchronize = _synchronize
        atexit.register(_log_sites)
        _APPLIED = True
    return True


def _cpu_tracker_class():
    from megatron.core.tensor_parallel import random as mrandom

    class CPURNGStatesTracker(mrandom.CudaRNGStatesTracker):
        """megatron's tracker semantics (named, separately seeded streams) on CPU generator
        states."""

        def add(self, name, seed):
            self._is_initialized = True
            if seed in self.seeds_:
                raise RuntimeError(f"seed {seed} already exists")
            self.seeds_.add(seed)
            if name in self.states_:
                raise RuntimeError(f"rng state {name} already exists")
            saved = torch.get_rng_state()
            torch.manual_seed(seed)
            self.states_[name] = torch.get_rng_state()
            torch.set_rng_state(saved)

        @contextlib.contextmanager
        def fork(self, name=mrandom._MODEL_PARALLEL_RNG_TRACKER_NAME):
            _record("rng_fork", 3)
            if name not in self.states_:
                raise RuntimeError(f"rng state {name} is not added")
            saved = torch.get_rng_state()
            torch.set_rng_state(self.states_[name])
            try:
                yield
            finally:
                self.states_[name] = torch.get_rng_state()
                torch.set_rng_state(saved)

    return CPURNGStatesTracker


def model_parallel_manual_seed(seed: int) -> None:
    """megatron's model_parallel_cuda_manual_seed, with the CPU tracker (B) when CUDA is absent."""
    from megatron.core.tensor_parallel import random as mrandom

    if needed():
        mrandom._CUDA_RNG_STATE_TRACKER = _cpu_tracker_class()()
        mrandom._CUDA_RNG_STATE_TRACKER_INITIALIZED = True
    mrandom.model_parallel_cuda_manual_seed(seed)


def _is_cuda(device) -> bool:
    return device is not None and not isinstance(device, int) and str(device).startswith("cuda")


class _CudaToCpu(TorchFunctionMode):
    def __init__(self, fake_cuda_type: bool):
        super().__init__()
        self.fake_cuda_type = fake_cuda_type

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is torch.Tensor.cuda:
            _record("tensor.cuda()")
            return args[0]
        if _is_cuda(kwargs.get("device")):
            _record("device='cuda'")
            kwargs["device"] = "cpu"
        if func is torch.Tensor.to and len(args) > 1 and _is_cuda(args[1]):
            _record("tensor.to(cuda)")
            args = (args[0], "cpu") + tuple(args[2:])
        out = func(*args, **kwargs)
        if (self.fake_cuda_type and func is torch.Tensor.type and len(args) == 1 and not kwargs
                and isinstance(out, str) and out.startswith("torch.") and ".cuda." not in out):
            _record("tensor.type()")
            out = out.replace("torch.", "torch.cuda.", 1)
        return out


def cuda_to_cpu(fake_cuda_type: bool = True):
    """Scoped shim D: `with cuda_to_cpu(): optimizer.step()`. A null context when CUDA exists."""
    if not needed():
        return contextlib.nullcontext()
    return _CudaToCpu(fake_cuda_type)
