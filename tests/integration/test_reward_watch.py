"""Issue 26: a run whose rewards are all 0 trains nothing (every advantage, loss and gradient
is 0) and nothing said so. A real `rlad train` of a random tiny student on the step-checked
chain_sum reward (which it never earns) warns once, naming the likely causes; the count is
bookkeeping/reward_watch.py RewardWatch."""

import json

from test_run_faults import _run

from rlad_megatron.bookkeeping.reward_watch import REWARD_ALARM_STEPS, RewardWatch
from rlad_megatron.config.run import RunConfig


def test_a_run_without_any_reward_warns_with_the_likely_cause(tmp_path):
    run = tmp_path / "run"
    done = _run(tmp_path, run, f"train.steps={REWARD_ALARM_STEPS + 1}",
                "data.reward=reasoning_gym", "data.check_steps=true")
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "rollout/reward_all_zero" in r]
    assert len(steps) == REWARD_ALARM_STEPS + 1
    assert all(r["rollout/reward_all_zero"] == 1.0 and r["rollout/reward_mean"] == 0 for r in steps)
    warning = (f"WARNING rlad: step {REWARD_ALARM_STEPS}: every reward of the last "
               f"{REWARD_ALARM_STEPS} steps was 0: every advantage, loss and gradient is 0")
    assert done.stderr.count(warning) == 1, done.stderr[-3000:]
    assert "rollout.max_new_tokens=10 cuts the answers off" in done.stderr


def test_the_watch_counts_streaks_of_uniform_rewards():
    watch, cfg = RewardWatch(steps=2), RunConfig()
    assert watch.update(1.0, 0.0, cfg) is None
    assert watch.update(0.0, 0.0, cfg) is None          # a step with signal breaks the streak
    assert watch.update(1.0, 0.0, cfg) is None
    assert "<answer>...</answer>" in watch.update(1.0, 0.0, cfg)   # chat format: the tags
    assert watch.update(1.0, 0.0, cfg) is None           # once per streak
    assert watch.update(0.0, 1.0, cfg) is None
    assert "was 1" in watch.update(0.0, 1.0, cfg)
