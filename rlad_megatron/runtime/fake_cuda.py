"""A fake CUDA device on a CPU-only torch, for checks that device work never touches the host.

    with FakeCuda() as fake:               # compute_device() is now cuda:0
        ...                                 # tensors made on cuda:0 are FakeCudaTensors
    fake.d2h                                # the device-to-host transfers, in order

Tensors "on" the fake device are FakeCudaTensor wrappers around real CPU tensors, so the code runs
with its real values (unlike FakeTensorMode, whose data-dependent ops, the very host
synchronisations counted here, cannot run). While the mode is on, compute_device() is cuda:0 and
every placement on cuda (or meta) makes a wrapper; a wrapper reports device type "meta", not
"cuda": a CPU-only torch has no CUDA device guard, so indexing assignment, copy_ and autograd on
a tensor reporting cuda abort there (FakeTensorMode's too: measured with torch 2.13.0+cpu), while
meta has one. Code that branches on `device.type == "cpu"` takes its device path. A dispatch mode
routes every op:
  * factory ops with device=cuda and `.to(cuda)` make wrappers (counted in h2d when they copy);
  * an op mixing a wrapper with a CPU tensor of dimension >= 1 raises FakeDeviceMismatch, as
    CUDA would (0-dim CPU tensors are scalars there too);
  * device-to-host transfers are recorded in `d2h`: .item(), bool(), int() and float() of a
    tensor (aten._local_scalar_dense), nonzero() (its size synchronises), .cpu() / .to("cpu"),
    copies into host tensors, .tolist() and .numpy(); `d2h_numel` holds each one's element count
    (1 for a scalar read; nonzero() counts its input).
The mode also makes torch.cuda.is_available() and current_device() answer as with one GPU, so
runtime/devices.compute_device() picks cuda:0; collectives are not faked (single process).
It enables nothing else of CUDA: streams, events and kernels outside aten are not emulated.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

aten = torch.ops.aten
FAKE_DEVICE = torch.device("meta")
"""What a fake device tensor reports as its device (see the module docstring)."""
_SYNC_OPS = {aten._local_scalar_dense.default: "item", aten.nonzero.default: "nonzero",
             aten.is_nonzero.default: "item"}
_ACTIVE: list["FakeCuda"] = []


class FakeDeviceMismatch(RuntimeError):
    """A CUDA tensor and a CPU tensor met in one op (CUDA raises the same)."""


class FakeCudaTensor(torch.Tensor):
    """A tensor on the fake device (reported as meta) whose values live in the CPU tensor
    `inner`."""

    inner: torch.Tensor

    @staticmethod
    def __new__(cls, inner: torch.Tensor):
        out = torch.Tensor._make_wrapper_subclass(
            cls, inner.size(), strides=inner.stride(), storage_offset=inner.storage_offset(),
            dtype=inner.dtype, layout=inner.layout, device=FAKE_DEVICE,
            requires_grad=inner.requires_grad)
        out.inner = inner
        return out

    def __repr__(self) -> str:
        return f"FakeCudaTensor({self.inner!r})"

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func in (torch.Tensor.tolist, torch.Tensor.numpy) and _ACTIVE:
            _ACTIVE[-1].record(func.__name__, args[0])
            return func(args[0].inner)
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **(kwargs or {}))

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        raise RuntimeError(f"{func} on a fake CUDA tensor outside FakeCuda")


def _is_cuda(device) -> bool:
    """A placement on the fake device: cuda (compute_device()) or meta (a wrapper's .device)."""
    return device is not None and torch.device(device).type in ("cuda", "meta")


def _unwrap(t):
    return t.inner if isinstance(t, FakeCudaTensor) else t


def _wrap(t):
    return FakeCudaTensor(t) if isinstance(t, torch.Tensor) else t


class _HostDataFactories(TorchFunctionMode):
    """torch.tensor / as_tensor / asarray with device=cuda (or a wrapper's meta): made on the CPU
    and moved with .to(cuda), which FakeCuda wraps (and counts in h2d). Without this, a meta
    placement makes a real meta tensor and drops the data."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.tensor, torch.as_tensor, torch.asarray) and \
                _is_cuda(kwargs.get("device")) and not isinstance(args[0], torch.Tensor):
            return func(*args, **{**kwargs, "device": "cpu"}).to(torch.device("cuda", 0))
        return func(*args, **kwargs)


class FakeCuda(TorchDispatchMode):
    """The fake device (module docstring). d2h: the transfers' kinds, in order, d2h_numel their
    sizes; h2d: count."""

    def __init__(self):
        super().__init__()
        self.d2h: list[str] = []
        self.d2h_numel: list[int] = []
        self.h2d = 0
        # the FAKE key: torch's factory functions then skip CUDA's lazy initialisation
        self._mode_key = torch._C._TorchDispatchModeKey.FAKE
        self._saved: Optional[tuple] = None

    def __enter__(self):
        self._saved = (torch._C._only_lift_cpu_tensors(), torch.cuda.is_available,
                       torch.cuda.current_device)
        torch._C._set_only_lift_cpu_tensors(True)
        torch._C._ensureCUDADeviceGuardSet()
        torch.cuda.is_available = lambda: True
        torch.cuda.current_device = lambda: 0
        _ACTIVE.append(self)
        self._factories = _HostDataFactories()
        self._factories.__enter__()
        return super().__enter__()

    def __exit__(self, *exc):
        lift, torch.cuda.is_available, torch.cuda.current_device = self._saved
        torch._C._set_only_lift_cpu_tensors(lift)
        _ACTIVE.remove(self)
        out = super().__exit__(*exc)
        self._factories.__exit__(*exc)
        return out

    @staticmethod
    def active() -> Optional["FakeCuda"]:
        """The innermost FakeCuda mode that is on, or None."""
        return _ACTIVE[-1] if _ACTIVE else None

    def record(self, kind: str, tensor: torch.Tensor) -> None:
        self.d2h.append(kind)
        self.d2h_numel.append(tensor.numel())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        flat, _ = tree_flatten((args, kwargs))
        fake = any(isinstance(a, FakeCudaTensor) for a in flat)
        to_cuda = _is_cuda(kwargs.get("device"))
        if to_cuda:
            kwargs = {**kwargs, "device": torch.device("cpu")}
        if func is aten._to_copy.default:
            target = args[0]
            if isinstance(target, FakeCudaTensor) and "device" in kwargs and not to_cuda:
                self.record("to_cpu", target)
                return func(target.inner, **kwargs)
            if to_cuda and not isinstance(target, FakeCudaTensor):
                self.h2d += 1
                return _wrap(func(target, **kwargs))
        elif func in _SYNC_OPS and fake:
            self.record(_SYNC_OPS[func], next(a for a in flat if isinstance(a, FakeCudaTensor)))
        elif func is aten.copy_.default and isinstance(args[1], FakeCudaTensor) and \
                not isinstance(args[0], FakeCudaTensor):
            self.record("copy_to_host", args[1])
            return args[0].copy_(args[1].inner)
        if fake:
            host = [tuple(a.shape) for a in flat if isinstance(a, torch.Tensor)
                    and not isinstance(a, FakeCudaTensor) and a.dim() > 0]
            if host:
                raise FakeDeviceMismatch(f"{func}: tensors on cuda:0 and host tensors of shapes "
                                         f"{host}")
        out = func(*tree_map(_unwrap, args), **tree_map(_unwrap, kwargs))
        if not (fake or to_cuda):
            return out
        if func._schema.is_mutable and args and isinstance(args[0], FakeCudaTensor):
            return args[0]  # in place: the same wrapper
        return tree_map(_wrap, out)


def on_fake_cuda(t: torch.Tensor, requires_grad: bool = False) -> FakeCudaTensor:
    """A copy of CPU tensor `t` on the fake device (outside or inside FakeCuda)."""
    out = FakeCudaTensor(t.detach().clone())
    return out.requires_grad_(requires_grad) if requires_grad else out
