"""Tiny trainer runs for tests: a character tokenizer for chain_sum and the overrides of a run
that takes a few seconds on CPU (random-weight student and teacher, compact prompts)."""

from pathlib import Path

from rlad_megatron.data.formats import chain_sum_solution
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
