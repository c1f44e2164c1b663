"""Held-out evaluation: mean@k accuracy, pass@k and response length, for the student or teacher.

    mean@k    = mean over prompts and k samples of the reward (1.0 = correct)
    pass@k    = fraction of prompts with at least one correct sample among k
    length    = mean response length in tokens
Greedy when eval.temperature is 0 (then k must be 1). Prompts are split over DP ranks
(round-robin) and the sums all-reduced, so the numbers do not depend on the layout. Sampling uses
its own seed space (not the training rollouts').
"""

from __future__ import annotations

import torch

from rlad_megatron.rollout import generate
from rlad_megatron.runtime import devices
from rlad_megatron.train.phases import completions, generation_config, prompt_ids


def evaluate(run, model, items, *, prefix: str = "eval") -> tuple[dict[str, float], str]:
    """(metrics, one sample completion) for `model` on the first eval.num_prompts `items`."""
    e = run.cfg.eval
    mine = items[:e.num_prompts][run.par.dp_rank::run.par.dp]
    gen = generation_config(run, samples=e.k, temperature=e.temperature, top_p=e.top_p, top_k=0,
                            max_new_tokens=e.max_new_tokens or run.cfg.rollout.max_new_tokens)
    batch = generate(model, prompt_ids(run, mine), gen, seed=2**31 - 1 - run.cfg.seed,
                     row_offset=run.par.dp_rank * len(mine) * e.k)
    texts = completions(run, batch)
    items_of_rows = [mine[i // e.k] for i in range(len(texts))]
    rewards = torch.tensor([run.reward_fn(run.fmt.to_reward_text(t, item), item)
                            for t, item in zip(texts, items_of_rows)], dtype=torch.float64)
    correct = (rewards >= 1.0).view(len(mine), e.k)
    sums = torch.tensor([rewards.sum().item(), float(correct.any(dim=1).sum()),
                         float(batch.response_lengths.sum()), float(len(mine)),
                         float(len(mine) * e.k)], dtype=torch.float64)
    devices.all_reduce(sums, group=run.par.dp_group)
    reward_sum, passed, length, n_prompts, n_samples = sums.tolist()
    return {f"{prefix}/accuracy": reward_sum / n_samples, f"{prefix}/pass_at_{e.k}": passed / n_prompts,
            f"{prefix}/response_len": length / n_samples,
            f"{prefix}/num_prompts": n_prompts}, (texts[0] if texts else "")
