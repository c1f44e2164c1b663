"""The run's generations as the sampler's settings (rollout/generate.py GenerationConfig): the one
mapping from the run configuration to them. train/phases.py and train/evaluate.py generate with
these views; config/validate.py checks them with GenerationConfig.validate, the checks the rollout
API runs when it is used alone, so every sampling rule lives there once and its errors name the
run-config key (KEYS).

    rollout  the student's rollouts, the teacher's trajectories and sft_distill's traces: rollout.*
    eval     the evaluation: eval.k samples at eval.temperature and eval.top_p, no top-k,
             eval.max_new_tokens (0: rollout.max_new_tokens)

Both generate with the rollout's engine and sizes (rollout.micro_batch_size, stop_check_every,
engine, max_live_rows, kv_block_size).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence, Union

from rlad_megatron.config.run import RunConfig

if TYPE_CHECKING:  # rollout/ imports megatron: loaded when a view is built
    from rlad_megatron.rollout.generate import GenerationConfig

SECTIONS = ("rollout", "eval")
"""The run's generation views, validated in this order (the engine settings they share are
checked, and named, by the first)."""
_ENGINE_KEYS = {"micro_batch_size": "rollout.micro_batch_size",
                "stop_check_every": "rollout.stop_check_every", "engine": "rollout.engine",
                "max_live_rows": "rollout.max_live_rows", "kv_block_size": "rollout.kv_block_size"}
KEYS = {"rollout": {"samples_per_prompt": "rollout.group_size"},
        "eval": {"samples_per_prompt": "eval.k", **_ENGINE_KEYS}}
"""view -> {GenerationConfig field: the run-config key its value comes from} where that is not
`view.field` (GenerationConfig.validate names the key in its errors)."""


def generation_view(cfg: RunConfig, view: str = "rollout", *, samples: Optional[int] = None,
                    eos_token_id: Union[int, Sequence[int], None] = None,
                    pad_token_id: int = 0) -> "GenerationConfig":
    """The GenerationConfig of one of the run's generations (module docstring); `samples` per
    prompt replaces the view's own (rollout.group_size, eval.k): rollout.teacher_samples for the
    teacher's trajectories, 1 for sft_distill's traces. The token ids are the tokenizer's."""
    from rlad_megatron.rollout.generate import GenerationConfig

    r, e = cfg.rollout, cfg.eval
    if view == "rollout":
        own = dict(max_new_tokens=r.max_new_tokens, temperature=r.temperature, top_k=r.top_k,
                   top_p=r.top_p, samples_per_prompt=r.group_size)
    elif view == "eval":
        own = dict(max_new_tokens=e.max_new_tokens or r.max_new_tokens,
                   temperature=e.temperature, top_k=0, top_p=e.top_p, samples_per_prompt=e.k)
    else:
        raise ValueError(f"generation view {view!r} is not one of {', '.join(SECTIONS)}")
    if samples is not None:
        own["samples_per_prompt"] = samples
    return GenerationConfig(**own, micro_batch_size=r.micro_batch_size,
                            stop_check_every=r.stop_check_every, engine=r.engine,
                            max_live_rows=r.max_live_rows, kv_block_size=r.kv_block_size,
                            eos_token_id=eos_token_id, pad_token_id=pad_token_id, progress=False)


def check_generations(cfg: RunConfig) -> None:
    """Every sampling setting of the run (GenerationConfig.validate on each view), a ValueError
    naming the run-config key of the first bad one."""
    for view in SECTIONS:
        generation_view(cfg, view).validate(view, keys=KEYS[view])
