"""Process start, layout validation and the CPU shims, in one process.

A failure here means a launcher's environment is misread (ranks from torchrun/srun), a bad layout
is accepted, or a CPU shim no longer rewrites what megatron hard-codes."""

import logging
import subprocess
import sys

import pytest
import torch

from rlad_megatron.runtime import cpu_shims
from rlad_megatron.runtime.distributed import detect_launcher
from rlad_megatron.runtime.parallel import ParallelConfig


def test_launcher_detected_from_torchrun_srun_or_none():
    assert detect_launcher({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}) == \
        ("torchrun", 3, 8, 1)
    assert detect_launcher({"SLURM_PROCID": "5", "SLURM_NTASKS": "16", "SLURM_LOCALID": "2"}) == \
        ("srun", 5, 16, 2)
    # torchrun inside an sbatch allocation: torchrun's variables win
    both = {"RANK": "1", "WORLD_SIZE": "2", "SLURM_PROCID": "0", "SLURM_NTASKS": "1"}
    assert detect_launcher(both)[0] == "torchrun"
    assert detect_launcher({}) == ("single", 0, 1, 0)


def test_single_process_start_then_parallel_state():
    code = ("from rlad_megatron.runtime import *; e = init_distributed(timeout_s=30); "
            "p = init_parallel(ParallelConfig()); "
            "print(e.launcher, e.world_size, e.backend, p.tp, p.dp)")
    # a fresh single-process start: nothing inherited from a process group this pytest process
    # (an earlier in-process test) may still hold, whose port is taken
    env = {k: v for k, v in __import__("os").environ.items()
           if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-5:] == ["single", "1", "gloo", "1", "1"]


@pytest.mark.parametrize("cfg,world,message", [
    (ParallelConfig(tensor=3), 4,
     r"parallel.tensor \* parallel.pipeline = 3 \* 1 = 3 does not divide the world size 4"),
    (ParallelConfig(tensor=0), 2, r"parallel.tensor must be a positive integer, got 0"),
    (ParallelConfig(pipeline=1, virtual_pipeline=2), 2,
     r"parallel.virtual_pipeline=2 needs parallel.pipeline >= 2"),
    (ParallelConfig(sequence_parallel=True), 2,
     r"parallel.sequence_parallel needs parallel.tensor > 1"),
])
def test_bad_layouts_are_refused_naming_the_key(cfg, world, message):
    with pytest.raises(ValueError, match=message):
        cfg.validate(world)


def test_cuda_to_cpu_rewrites_hard_coded_cuda_and_records_the_call_site():
    assert cpu_shims.needed(), "these tests run on a CPU-only torch"
    before = sum(cpu_shims.intercepted_sites().values())
    with cpu_shims.cuda_to_cpu(fake_cuda_type=True):
        t = torch.zeros(3, device="cuda")
        moved = torch.ones(2).cuda()
        to = torch.ones(2).to("cuda")
        kind = t.type()
    assert t.device.type == moved.device.type == to.device.type == "cpu"
    assert kind == "torch.cuda.FloatTensor"
    sites = cpu_shims.intercepted_sites()
    assert sum(sites.values()) >= before + 4
    assert any(path.endswith("test_runtime.py") for (_, path, _) in sites)
    with pytest.raises((AssertionError, RuntimeError)):
        torch.zeros(1, device="cuda")  # outside the scope nothing is rewritten


def test_shims_report_call_sites_at_debug_level(caplog):
    cpu_shims.apply()
    torch.cuda.current_device()
    with caplog.at_level(logging.DEBUG, logger="rlad_megatron.cpu_shims"):
        cpu_shims._log_sites()
    assert any("current_device" in r.message and "test_runtime.py" in r.message
               for r in caplog.records)
