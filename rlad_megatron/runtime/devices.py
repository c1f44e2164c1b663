"""Where tensors live: the compute device, and collectives on small CPU-side tensors.

Models run on `compute_device()` (the local GPU under NCCL, the CPU under gloo), and so does
the RL step's data (rollouts, log-probs, rewards, advantages, selection: train/phases.py). Some
control-plane values are made on the host (metrics, micro-batch counts); NCCL only moves CUDA
tensors, so the collectives below copy such a tensor to the GPU for the call and back (a no-op
for a tensor already there, and under gloo). Use them for control-plane values (counts, flags,
metrics, sampled ids), never for activations.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist


def compute_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _comm_device(group: Optional[dist.ProcessGroup]) -> torch.device:
    backend = dist.get_backend(group)
    return compute_device() if "nccl" in str(backend).lower() else torch.device("cpu")


def all_reduce(tensor: torch.Tensor, op=dist.ReduceOp.SUM,
               group: Optional[dist.ProcessGroup] = None) -> torch.Tensor:
    """In-place semantics like dist.all_reduce, for a tensor on any device; returns it."""
    device = _comm_device(group)
    if tensor.device == device:
        dist.all_reduce(tensor, op=op, group=group)
        return tensor
    moved = tensor.to(device)
    dist.all_reduce(moved, op=op, group=group)
    tensor.copy_(moved)
    return tensor


def broadcast(tensor: torch.Tensor, src: int,
              group: Optional[dist.ProcessGroup] = None) -> torch.Tensor:
    """dist.broadcast from global rank `src`, for a tensor on any device; returns it."""
    device = _comm_device(group)
    if tensor.device == device:
        dist.broadcast(tensor, src=src, group=group)
        return tensor
    moved = tensor.to(device)
    dist.broadcast(moved, src=src, group=group)
    tensor.copy_(moved)
    return tensor


def all_gather(parts: list[torch.Tensor], tensor: torch.Tensor,
               group: Optional[dist.ProcessGroup] = None) -> list[torch.Tensor]:
    """dist.all_gather into `parts` (same device as `tensor`)."""
    device = _comm_device(group)
    if tensor.device == device:
        dist.all_gather(parts, tensor, group=group)
        return parts
    moved = [torch.empty_like(tensor, device=device) for _ in parts]
    dist.all_gather(moved, tensor.to(device), group=group)
    for out, m in zip(parts, moved):
        out.copy_(m)
    return parts
