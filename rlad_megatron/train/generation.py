"""What a run generates with, shared by the RL step (train/phases.py) and the evaluation
(train/evaluate.py): prompts as token ids in the run's prompt format, the sampler's settings of
each generation (config/generation.py views with the tokenizer's ids), and responses decoded back
to text for the reward. The token ids reach the host once, to be decoded (a reward is a Python
function of text); nothing else of a batch does.
"""

from __future__ import annotations

from typing import Optional

from rlad_megatron.config.generation import generation_view
from rlad_megatron.data.batch import RolloutBatch
from rlad_megatron.data.formats import encode_prompt
from rlad_megatron.data.tasks import PromptItem
from rlad_megatron.rollout import GenerationConfig
from rlad_megatron.train.run import Run


def prompt_ids(run: Run, items: list[PromptItem]) -> list[list[int]]:
    return [encode_prompt(run.fmt, run.tokenizer, item, run.cfg.data.system_prompt)
            for item in items]


def generation_config(run: Run, view: str = "rollout", *,
                      samples: Optional[int] = None) -> GenerationConfig:
    """The sampler's settings of one of the run's generations (config/generation.py: "rollout"
    or "eval"; `samples` per prompt replaces the view's own), with the tokenizer's EOS and pad
    ids."""
    return generation_view(run.cfg, view, samples=samples, eos_token_id=run.tokenizer.eos_id,
                           pad_token_id=run.tokenizer.pad_id or 0)


def completions(run: Run, batch: RolloutBatch) -> list[str]:
    """Decoded responses (EOS dropped; ids the tokenizer does not know, from model vocabulary
    rows beyond it, are dropped too). The token ids reach the host in one copy."""
    eos, known = run.tokenizer.eos_id, run.tokenizer.vocab_size
    tokens = batch.tokens.tolist()
    out = []
    for row, (p, n) in enumerate(zip(batch.prompt_lengths.tolist(),
                                     batch.response_lengths.tolist())):
        ids = tokens[row][p:p + n]
        out.append(run.tokenizer.decode([t for t in ids if t != eos and t < known]))
    return out

