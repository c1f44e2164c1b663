"""A warning when the rewards carry no signal: every reward of `REWARD_ALARM_STEPS` consecutive
steps is 0 (or every one is 1). GRPO-style advantages are then 0, and so are the loss and the
gradient: the run trains nothing, and no metric says why. The warning names the likely causes,
once per streak.
"""

from __future__ import annotations

from typing import Optional

REWARD_ALARM_STEPS = 5
"""Consecutive steps of uniform 0 (or 1) rewards before the warning."""


class RewardWatch:
    """Counts consecutive steps whose rewards were all 0 or all 1 (on every data-parallel rank:
    the step's rollout/reward_all_zero / reward_all_one metrics are 1)."""

    def __init__(self, steps: int = REWARD_ALARM_STEPS):
        self.steps = steps
        self.zero = self.one = 0

    def update(self, all_zero: float, all_one: float, cfg) -> Optional[str]:
        """The warning to print after this step, or None."""
        self.zero = self.zero + 1 if all_zero == 1.0 else 0
        self.one = self.one + 1 if all_one == 1.0 else 0
        if self.zero == self.steps:
            return zero_reward_warning(cfg, self.steps)
        if self.one == self.steps:
            return (f"every reward of the last {self.steps} steps was 1: every advantage, loss "
                    f"and gradient is 0, so the student learns nothing. The task is too easy "
                    f"for it (data.task={cfg.data.task}): choose harder data.task_config or "
                    f"data.levels")
        return None


def zero_reward_warning(cfg, steps: int) -> str:
    d = cfg.data
    reward = (f"the reward {d.reward!r} reads the answer from <answer>...</answer> or the last "
              f"\\boxed{{...}} of a completion (data/rewards.py): with data.format=chat the "
              f"model must be asked for it (data.system_prompt, data.answer_prefill, or a chat "
              f"template that does)"
              if d.format == "chat" else
              f"with data.format={d.format} only completions that follow the format's steps "
              f"score" + (" (data.check_steps=true)" if d.check_steps else ""))
    return (f"every reward of the last {steps} steps was 0: every advantage, loss and gradient "
            f"is 0, so the student learns nothing. Likely causes: {reward}; "
            f"rollout.max_new_tokens={cfg.rollout.max_new_tokens} cuts the answers off; or "
            f"data.task={d.task} is too hard for the student. See rollout/sample in "
            f"{cfg.run_dir}/metrics.jsonl for what it writes")
