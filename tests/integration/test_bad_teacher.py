"""`rlad train algorithm=sft_distill` with a teacher whose weights carry no information (a
near-uniform random init, as when a checkpoint was not loaded) stops with the named teacher
error, as rlad and kdrl do, instead of exiting 0 having kept no trace.
"""

import subprocess
import sys
from pathlib import Path

from tiny_runs import char_tokenizer, tiny_overrides

REPO = Path(__file__).resolve().parents[2]


def test_sft_distill_refuses_a_uniform_teacher(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("{}\n")
    over = tiny_overrides(char_tokenizer(tmp_path), tmp_path / "run", "sft_distill")
    out = subprocess.run([sys.executable, "-m", "rlad_megatron.cli", "train", str(empty), *over,
                          "teacher.spec.init_method_std=1e-5", "eval.at_start=false"],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 2, out.stdout[-1500:] + out.stderr[-1500:]
    assert "teacher log-probs (random weights)" in out.stderr and "look uniform" in out.stderr
    assert not (tmp_path / "run" / "summary.json").exists()
