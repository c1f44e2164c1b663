"""Tiny trainer runs for tests: a character tokenizer for chain_sum and the overrides of a run
that takes a few seconds on CPU (random-weight student and teacher, compact prompts)."""

from pathlib import Path

from rlad_megatron.data.miniature.compact import chain_sum_solution
from rlad_megatron.data.tokenizer_train import train_sentencepiece


def char_tokenizer(folder: Path) -> Path:
    path = Path(folder) / "chain_sum_char.model"
    if not path.exists():
        lines = [f"{a}+{b}-{c}=" + chain_sum_solution(f"{a}+{b}-{c}")
                 for a in range(10) for b in range(10) for c in range(10)]
        train_sentencepiece(lines, path.with_suffix(""))
    return path


def tiny_overrides(tokenizer: Path, run_dir: Path, algorithm: str = "rlad", steps: int = 2):
    tok = str(tokenizer)
    return [
        f"algorithm={algorithm}", f"run_dir={run_dir}", "seed=7",
        "student.preset=tiny-llama", "student.spec.vocab_size=19", "student.spec.num_layers=2",
        "student.spec.init_method_std=0.2", f"student.tokenizer={tok}", "student.random_init=true",
        "teacher.preset=tiny-llama", "teacher.spec.vocab_size=19", "teacher.spec.num_layers=2",
        "teacher.spec.hidden_size=96", "teacher.spec.ffn_hidden_size=192",
        "teacher.spec.init_method_std=0.3", f"teacher.tokenizer={tok}", "teacher.random_init=true",
        "data.task=chain_sum", "data.format=compact", "data.train_size=64", "data.heldout_size=8",
        # random tiny models rarely solve chain_sum; the format reward (a "#" then an answer) gives
        # every group reward variance, so the updates are real
        "data.reward=format", "data.check_steps=false",
        "data.task_config.min_terms=2", "data.task_config.max_terms=3",
        "data.task_config.min_digits=1", "data.task_config.max_digits=1",
        "rollout.prompts_per_step=4", "rollout.group_size=4", "rollout.max_new_tokens=10",
        "train.micro_batch_size=2", "train.mini_batches=2", "train.sft_batch_size=8",
        f"train.steps={steps}", "optimizer.lr=3e-3", "eval.num_prompts=4",
        "logging.progress=false", "logging.tensorboard=true", "checkpoint.keep_last=2",
    ]


TINY_RECIPE = """
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
    spec: {{num_layers: 1, hidden_size: 32, ffn_hidden_size: 64, num_attention_heads: 2,
            num_query_groups: 1, vocab_size: 0, max_position_embeddings: 48}}
  train: {{steps: 40, sft_batch_size: 8, micro_batch_size: 8}}
  optimizer: {{lr: 3.0e-3}}
student_sft:
  student:
    preset: tiny-llama
    spec: {{num_layers: 1, hidden_size: 32, ffn_hidden_size: 64, num_attention_heads: 2,
            num_query_groups: 1, vocab_size: 0, max_position_embeddings: 48}}
  train: {{steps: 2, sft_batch_size: 8, micro_batch_size: 8}}
rl:
  rollout: {{prompts_per_step: 2, group_size: 2}}
  train: {{steps: 2, micro_batch_size: 2, mini_batches: 1}}
  eval: {{every: 1}}
reproduce:
  seeds: [1, 2]
  jobs: 2
  prepare_procs: 1
  arms:
    grpo: {{algorithm: grpo}}
    rlad: {{algorithm: rlad}}
  alphas: [0.3]
"""
"""A tiny `rlad reproduce` recipe (format with cache= and run=): teacher and student SFT in
seconds, two arms and one alpha arm x two seeds of two RL steps."""
