"""Metric sinks (JSONL, TensorBoard, W&B guard) and timers, on the real filesystem.

Start here when metrics.jsonl or the TensorBoard curves look wrong after a resume.
"""

import json
import math
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from rlad_megatron.bookkeeping import timers
from rlad_megatron.bookkeeping.metrics import (MetricsLogger, NullMetricsLogger, open_metrics,
                                               read_metrics)
from rlad_megatron.bookkeeping.timers import PhaseTimer, memory_stats, progress, throughput


def _log_steps(run_dir, steps, *, offset=0.0, resume=False, truncate=None, tensorboard=False):
    with open_metrics(run_dir, enabled=True, tensorboard=tensorboard, resume=resume) as m:
        if truncate is not None:
            m.truncate_from(truncate)
        for s in steps:
            m.log(s, {"rollout/reward_mean": s / 10 + offset, "loss/trrd": -s})
            m.log_text(s, "samples/completion", f"step {s}\nanswer: {s + offset}")


def test_jsonl_round_trips_values_and_non_finite(tmp_path):
    m = open_metrics(tmp_path, enabled=True, tensorboard=False)
    assert isinstance(m, MetricsLogger)
    values = {"a/float": 0.25, "a/int": 3, "a/bool": True, "a/numpy": np.float32(1.5),
              "a/tensor": torch.tensor(2.5), "a/nan": float("nan"), "a/inf": float("inf"),
              "a/ninf": -math.inf}
    before = time.time()
    m.log(7, values)
    m.log(8, {"a/float": 0.5})
    m.close()

    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2
    raw = json.loads(lines[0], parse_constant=pytest.fail)  # strict JSON: no bare NaN
    assert raw["a/nan"] == "nan" and raw["a/inf"] == "inf" and raw["a/ninf"] == "-inf"

    rec = read_metrics(tmp_path)
    assert [r["step"] for r in rec] == [7, 8]
    assert rec[0]["time"] >= before
    assert rec[0]["a/float"] == 0.25 and rec[0]["a/int"] == 3 and rec[0]["a/bool"] == 1
    assert rec[0]["a/numpy"] == 1.5 and rec[0]["a/tensor"] == 2.5
    assert math.isnan(rec[0]["a/nan"]) and rec[0]["a/inf"] == math.inf
    assert rec[0]["a/ninf"] == -math.inf
    again = read_metrics(tmp_path / "metrics.jsonl")  # a file path works too
    assert [r["a/float"] for r in again] == [0.25, 0.5]


def test_log_rejects_non_scalars_and_reserved_keys(tmp_path):
    with open_metrics(tmp_path, enabled=True, tensorboard=False) as m:
        with pytest.raises(TypeError, match="loss/vec"):
            m.log(0, {"loss/vec": torch.ones(2)})
        with pytest.raises(ValueError, match="reserved"):
            m.log(0, {"step": 1.0})


def test_truncate_from_on_resume_drops_late_steps(tmp_path):
    _log_steps(tmp_path, range(5))
    _log_steps(tmp_path, [3, 4, 5], offset=100.0, resume=True, truncate=3)

    rec = read_metrics(tmp_path)
    assert [r["step"] for r in rec] == [0, 1, 2, 3, 4, 5]
    assert [r["rollout/reward_mean"] for r in rec] == [0.0, 0.1, 0.2, 100.3, 100.4, 100.5]
    texts = [json.loads(x) for x in (tmp_path / "text.jsonl").read_text().splitlines()]
    assert [t["step"] for t in texts] == [0, 1, 2, 3, 4, 5]
    assert texts[3]["text"] == "step 3\nanswer: 103.0"

    _log_steps(tmp_path, [0])  # a fresh run (resume=False) starts a new file
    assert [r["step"] for r in read_metrics(tmp_path)] == [0]


def test_resume_drops_a_line_torn_by_a_crash(tmp_path):
    _log_steps(tmp_path, range(2))
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 2, "rollout/rew')
    assert [r["step"] for r in read_metrics(tmp_path)] == [0, 1]  # torn last line skipped
    _log_steps(tmp_path, [2], resume=True)
    assert [r["step"] for r in read_metrics(tmp_path)] == [0, 1, 2]


def _tb_scalars(log_dir, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    assert tag in acc.Tags()["scalars"], acc.Tags()["scalars"]
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_tensorboard_scalars_readable_and_purged_on_resume(tmp_path):
    _log_steps(tmp_path, range(4), tensorboard=True)
    tb = tmp_path / "tensorboard"
    got = _tb_scalars(tb, "rollout/reward_mean")
    assert [s for s, _ in got] == [0, 1, 2, 3]
    assert [v for _, v in got] == pytest.approx([0.0, 0.1, 0.2, 0.3])
    assert _tb_scalars(tb, "loss/trrd") == [(0, 0.0), (1, -1.0), (2, -2.0), (3, -3.0)]

    _log_steps(tmp_path, [2, 3], offset=100.0, resume=True, truncate=2, tensorboard=True)
    got = _tb_scalars(tb, "rollout/reward_mean")
    assert [s for s, _ in got] == [0, 1, 2, 3]
    assert [v for _, v in got] == pytest.approx([0.0, 0.1, 100.2, 100.3])


def test_disabled_logger_writes_nothing(tmp_path):
    run_dir = tmp_path / "run"
    m = open_metrics(run_dir, enabled=False, wandb_project="would-fail-without-wandb")
    assert isinstance(m, NullMetricsLogger)
    with m:
        m.truncate_from(0)
        m.log(0, {"rollout/reward_mean": 1.0})
        m.log_text(0, "samples/completion", "x")
    assert not run_dir.exists()
    assert read_metrics(run_dir) == []


def test_wandb_missing_gives_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    with pytest.raises(ImportError, match=r"logging\.wandb_project.*pip install wandb"):
        open_metrics(tmp_path, enabled=True, tensorboard=False, wandb_project="rlad")


def test_wandb_initialises_offline_and_keeps_its_id(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    with open_metrics(tmp_path, enabled=True, tensorboard=False, wandb_project="rlad",
                      config={"loss": "trrd"}) as m:
        m.log(0, {"rollout/reward_mean": 0.5})
    run_id = (tmp_path / "wandb_id.txt").read_text().strip()
    with open_metrics(tmp_path, enabled=True, tensorboard=False, wandb_project="rlad",
                      resume=True) as m:
        m.log(1, {"rollout/reward_mean": 0.6})
    assert (tmp_path / "wandb_id.txt").read_text().strip() == run_id


def test_phase_timer_sums_repeated_phases_and_the_step(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(timers.time, "perf_counter", lambda: now[0])

    def work(seconds):
        now[0] += seconds

    timer = PhaseTimer(cuda_sync=False)
    for _ in range(3):
        with timer.phase("update"):
            work(2.0)
    with timer.phase("rollout"):
        work(5.0)
    work(1.0)  # outside any phase: only in the step total
    assert timer.elapsed("update") == 6.0
    assert timer.pop() == {"time/update_s": 6.0, "time/rollout_s": 5.0, "time/step_s": 12.0}

    with pytest.raises(RuntimeError):
        with timer.phase("rollout"):
            work(0.5)
            raise RuntimeError("boom")
    assert timer.pop() == {"time/rollout_s": 0.5, "time/step_s": 0.5}


def test_throughput():
    assert throughput(1000, 4.0) == 250.0
    assert math.isnan(throughput(1000, 0.0))


def test_memory_stats_reports_positive_rss():
    stats = memory_stats()
    assert stats["memory/rss_mib"] > 0
    assert stats["memory/peak_rss_mib"] >= stats["memory/rss_mib"] * 0.9
    assert all(k.startswith("memory/") for k in stats)
    if not torch.cuda.is_available():
        assert set(stats) == {"memory/rss_mib", "memory/peak_rss_mib"}


def test_progress_silent_when_disabled_and_on_stderr_when_enabled(capsys):
    bar = progress([1, 2, 3], desc="rollout", enabled=False)
    assert list(bar) == [1, 2, 3]
    bar.set_postfix(reward=0.5)
    manual = progress(5, desc="steps", enabled=False)
    manual.update(1)
    manual.close()
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""

    with progress(3, desc="steps", enabled=True, mininterval=0) as bar:
        for _ in range(3):
            bar.update(1)
            bar.set_postfix(reward=0.5)
    out = capsys.readouterr()
    assert out.out == ""
    assert "steps" in out.err and "3/3" in out.err and "reward=0.5" in out.err


def test_progress_in_a_log_file_redraws_once_a_minute(tmp_path):
    """stderr to a file (a log, not a terminal): 200 quick updates with a postfix each (as the
    trainer's loop sets them) leave the opening and the closing line, not 200 carriage-return
    redraws."""
    code = ("from rlad_megatron.bookkeeping.timers import progress\n"
            "with progress(200, desc='steps', mininterval=0) as bar:\n"
            "    for i in range(200):\n"
            "        bar.update(1)\n"
            "        bar.set_postfix(loss=i, refresh=False)\n")
    log = tmp_path / "log.txt"
    with open(log, "w") as f:
        subprocess.run([sys.executable, "-c", code], stderr=f, check=True)
    text = log.read_bytes()
    assert 1 <= text.count(b"\r") <= 3 and b"200/200" in text, text
