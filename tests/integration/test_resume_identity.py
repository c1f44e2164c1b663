"""Resuming refuses a checkpoint of another run: pointing an RL run's run_dir
at an SFT run's folder used to resume the SFT run as RL, and keep_last then deleted the SFT
run's checkpoint. Real `rlad train` processes, tiny models."""

import subprocess
import sys
from pathlib import Path

from tiny_runs import char_tokenizer, tiny_overrides

REPO = Path(__file__).resolve().parents[2]


def _train(tmp_path, run_dir, algorithm, *extra):
    empty = tmp_path / "empty.yaml"
    empty.write_text("{}\n")
    over = tiny_overrides(char_tokenizer(tmp_path), run_dir, algorithm)
    return subprocess.run([sys.executable, "-m", "rlad_megatron.cli", "train", str(empty), *over,
                           "eval.at_start=false", "checkpoint.keep_last=1", *extra],
                          cwd=REPO, capture_output=True, text=True, timeout=600)


def test_rl_run_refuses_to_resume_an_sft_run(tmp_path):
    run = tmp_path / "run"
    first = _train(tmp_path, run, "sft")
    assert first.returncode == 0, first.stderr[-2000:]
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    second = _train(tmp_path, run, "grpo", "train.steps=4")
    assert second.returncode == 2, second.stdout[-1000:] + second.stderr[-1000:]
    assert "holds another run" in second.stderr
    assert "algorithm: checkpoint 'sft', this run 'grpo'" in second.stderr
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ckpts  # nothing deleted
    # told to, it resumes (and says what differs)
    third = _train(tmp_path, run, "grpo", "train.steps=3", "checkpoint.resume_other_run=true")
    assert third.returncode == 0, third.stderr[-2000:]
    assert "resumed from" in third.stdout
