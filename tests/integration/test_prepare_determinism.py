"""The same recipe prepared twice gives the same models, bit for bit, whatever the machine's
defaults: two fresh `rlad prepare` processes (through the reproduction's own launcher) with a
different PYTHONHASHSEED, another OMP_NUM_THREADS and another preferred CPU kernel path
(ATEN_CPU_CAPABILITY avx512 vs avx2, as an AVX-512 and an AVX2-only CPU would pick) write
identical tokenizer and checkpoint files.

A failure means `make demo` or `make reproduce` give other numbers on another machine of the same
kind: something in the preparation depends on hash order, thread count or the CPU's kernels."""

import hashlib
import os
from pathlib import Path

from rlad_megatron.reproduce.runner import prepare_stages

RECIPE = """
cache_dir: {cache}
run_dir: {run}
base:
  seed: 7
  parallel: {{tensor: 1}}
  data: {{source: reasoning_gym, task: chain_sum, levels: [3, 4],
          task_config: {{min_digits: 1, max_digits: 1}}, format: compact, check_steps: false,
          train_size: 64, validation_size: 4, heldout_size: 8}}
  rollout: {{max_new_tokens: 24}}
  eval: {{num_prompts: 0, k: 2, temperature: 0.6, top_p: 0.95}}
  logging: {{progress: false, tensorboard: false}}
teacher_sft:
  student:
    preset: tiny-llama
    spec: {{num_layers: 2, hidden_size: 64, ffn_hidden_size: 128, num_attention_heads: 2,
            num_query_groups: 1, vocab_size: 0, max_position_embeddings: 48}}
  train: {{steps: 30, sft_batch_size: 16, micro_batch_size: 8}}
  optimizer: {{lr: 3.0e-3, warmup_steps: 5, decay_style: cosine}}
student_sft:
  student:
    preset: tiny-llama
    spec: {{num_layers: 1, hidden_size: 32, ffn_hidden_size: 64, num_attention_heads: 2,
            num_query_groups: 1, vocab_size: 0, max_position_embeddings: 48}}
  train: {{steps: 10, sft_batch_size: 8, micro_batch_size: 8}}
rl:
  rollout: {{prompts_per_step: 2, group_size: 2}}
  train: {{steps: 2, micro_batch_size: 2, mini_batches: 1}}
reproduce:
  seeds: [1]
  prepare_procs: 1
  arms:
    grpo: {{algorithm: grpo}}
"""

ENVS = ({"PYTHONHASHSEED": "1", "OMP_NUM_THREADS": "2", "ATEN_CPU_CAPABILITY": "avx512"},
        {"PYTHONHASHSEED": "2", "OMP_NUM_THREADS": "1", "ATEN_CPU_CAPABILITY": "avx2"})


def _digests(cache: Path) -> dict[str, str]:
    """sha256 of the tokenizer and of every checkpoint data file (*.distcp) under `cache`."""
    files = [*cache.glob("tokenizer.*"), *cache.rglob("*.distcp")]
    return {str(f.relative_to(cache)): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def test_two_preparations_in_fresh_processes_are_bit_identical(tmp_path, monkeypatch):
    digests = []
    for i, env in enumerate(ENVS):
        recipe = tmp_path / f"recipe_{i}.yaml"
        recipe.write_text(RECIPE.format(cache=tmp_path / f"cache_{i}", run=tmp_path / f"run_{i}"))
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        monkeypatch.delenv("RLAD_NATIVE_CPU_KERNELS", raising=False)
        assert prepare_stages(str(recipe), [], procs=1) == 0
        digests.append(_digests(tmp_path / f"cache_{i}"))
    first, second = digests
    assert len(first) >= 5 and any("teacher" in k for k in first) and any(
        "student" in k for k in first), sorted(first)
    differing = sorted(k for k in first if first[k] != second.get(k))
    assert first.keys() == second.keys() and not differing, (
        f"files differ between the two preparations: {differing}")
    assert os.environ["PYTHONHASHSEED"] == "2"
