"""Shared by the test folders: agreeing assertions for the multi-rank suites (tests/dist,
tests/dist4), and a single-process group for in-process tests that build megatron models."""

import contextlib
import os

import pytest
import torch
import torch.distributed as dist


def assert_all_ranks(ok: bool, message: str) -> None:
    """Every rank asserts together: a failure on any rank fails all of them (no one is left
    waiting in a collective until the timeout)."""
    flag = torch.tensor([1 if ok else 0], dtype=torch.int32)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    assert ok, f"[rank {dist.get_rank()}] {message}"
    assert flag.item() == 1, f"[rank {dist.get_rank()}] another rank failed: {message}"


def assert_close_all_ranks(actual: torch.Tensor, expected: torch.Tensor, *, rtol: float,
                           atol: float, what: str) -> None:
    diff = (actual.double() - expected.double()).abs()
    bound = atol + rtol * expected.double().abs()
    ok = bool((diff <= bound).all()) and actual.shape == expected.shape
    worst = diff.max().item() if diff.numel() else 0.0
    assert_all_ranks(ok, f"{what}: max |diff| {worst:.3e} (rtol {rtol}, atol {atol}), "
                         f"shapes {tuple(actual.shape)} vs {tuple(expected.shape)}")


@contextlib.contextmanager
def single_process_group():
    """A world-size-1 gloo group for in-process imports, removed afterwards together with the
    MASTER_ADDR/MASTER_PORT it put in os.environ (a later subprocess would inherit a busy port).
    An already running group is left alone."""
    from rlad_megatron.runtime import init_distributed

    if dist.is_initialized():
        yield
        return
    saved = {k: os.environ.get(k) for k in ("MASTER_ADDR", "MASTER_PORT")}
    init_distributed(timeout_s=120)
    try:
        yield
    finally:
        dist.destroy_process_group()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module", autouse=True)
def process_group():
    """Imported by an in-process test module: a world-size-1 gloo group for all its tests."""
    with single_process_group():
        yield
