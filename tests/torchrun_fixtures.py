"""Fixtures of the torchrun suites (tests/dist, 2 ranks; tests/dist4, 4 ranks), imported by their
conftest.py files: one gloo group for the session, and the `parallel` fixture that rebuilds
megatron's parallel state per test with the requested layout."""

import warnings

import pytest

warnings.filterwarnings("ignore", message=".*Transformer Engine.*")
warnings.filterwarnings("ignore", message=".*Apex is not installed.*")


@pytest.fixture(scope="session", autouse=True)
def distributed():
    import torch.distributed as dist
    from rlad_megatron.runtime import init_distributed

    env = init_distributed(timeout_s=120)
    yield env
    dist.barrier()


@pytest.fixture
def parallel(request):
    """request.param: (tensor, pipeline) or (tensor, pipeline, virtual_pipeline)."""
    from rlad_megatron.runtime import ParallelConfig, destroy_parallel, init_parallel

    tp, pp, *rest = request.param
    par = init_parallel(ParallelConfig(tensor=tp, pipeline=pp,
                                       virtual_pipeline=rest[0] if rest else None))
    yield par
    destroy_parallel()


@pytest.fixture
def shared_tmp_path(tmp_path):
    """One temporary folder for all ranks (rank 0's tmp_path)."""
    import torch.distributed as dist

    holder = [str(tmp_path)]
    dist.broadcast_object_list(holder, src=0)
    from pathlib import Path

    return Path(holder[0])
