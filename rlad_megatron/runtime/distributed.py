"""Start torch.distributed from torchrun or srun environment variables, or as a single process.

Backend: NCCL when CUDA is present, gloo otherwise. The timeout is explicit so that a rank
waiting for a dead peer raises instead of hanging (gloo honours it; NCCL needs
TORCH_NCCL_ASYNC_ERROR_HANDLING, which torch enables by default).

Rank sources, in order:
  torchrun:  RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT
  srun:      SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID (MASTER_ADDR/MASTER_PORT must be exported
             by the sbatch script, as slurm/rlad_train.sbatch does)
  neither:   a single process (rank 0 of 1) on a free local port
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import timedelta
from typing import Optional

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job."""

    rank: int
    world_size: int
    local_rank: int
    backend: str
    launcher: str  # "torchrun" | "srun" | "single"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def detect_launcher(environ=os.environ) -> tuple[str, int, int, int]:
    """Return (launcher, rank, world_size, local_rank) from the environment."""
    if "RANK" in environ and "WORLD_SIZE" in environ:
        return ("torchrun", int(environ["RANK"]), int(environ["WORLD_SIZE"]),
                int(environ.get("LOCAL_RANK", 0)))
    if "SLURM_PROCID" in environ and "SLURM_NTASKS" in environ:
        return ("srun", int(environ["SLURM_PROCID"]), int(environ["SLURM_NTASKS"]),
                int(environ.get("SLURM_LOCALID", 0)))
    return ("single", 0, 1, 0)


def init_distributed(timeout_s: float = 600.0, backend: str | None = None) -> DistEnv:
    """Initialise the default process group once; later calls return the same DistEnv."""
    launcher, rank, world, local_rank = detect_launcher()
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if not dist.is_initialized():
        if launcher == "srun":
            missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
            if missing:
                raise RuntimeError(
                    f"running under srun but {', '.join(missing)} is not set: export them in the "
                    "sbatch script (see slurm/rlad_train.sbatch)")
        if launcher == "single":
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", str(_free_port()))
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend, rank=rank, world_size=world,
                                timeout=timedelta(seconds=timeout_s))
    return DistEnv(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank,
                   backend=dist.get_backend(), launcher=launcher)


def print0(*args, **kwargs) -> None:
    """print on global rank 0 only (or always when torch.distributed is not started)."""
    if not dist.is_initialized() or dist.get_rank() == 0:
        print(*args, flush=True, **kwargs)


def agree_or_raise(error: Optional[str]) -> None:
    """Raise the same ValueError on every rank when any rank found one (no rank left hanging in
    a later collective): each rank passes its own error or None."""
    errors = [None] * dist.get_world_size()
    dist.all_gather_object(errors, error)
    first = next((e for e in errors if e), None)
    if first:
        raise ValueError(first)
