"""Benchmark: the cost of one RLAD step against one GRPO step, side by side, through the
trainer's own step (train/loop.py rl_step, set up by train/setup.py as `rlad train` does).

    python -m bench.step [--quick]

One Run is set up for RLAD (random-weight tiny-llama student and a larger teacher, the chain_sum
prompts of the compact format, a character tokenizer trained for the run); the GRPO variant is
the same Run with algorithm grpo and no teacher. Before every repetition the student's weights,
optimizer state and prompt sampler are restored, so both variants roll out the same prompts with
the same weights and draw the same samples (random weights never emit EOS early: every response
is rollout.max_new_tokens long, and their rewards are all 0, so the advantages are 0: the work
of every phase is that of any step). Single process, fp32, 1 thread. The phase breakdown is the
trainer's own timer (time/rollout_s, time/old_logprobs_s, time/teacher_logprobs_s, time/update_s).

The paper measured +15.5% for RLAD over GRPO per step (Table 4, rollout included). Target here:
the training-side overhead (step time without rollout and reward, rlad/grpo - 1) is at most the
teacher forward's share plus 5%, where teacher_share = teacher log-prob time / GRPO training-side
time; everything else RLAD adds (selection, the TRRD ratio, its metrics) must stay within the 5%.
The full-step overhead (rollout included, as in the paper) is reported too.

Varied lengths: the same RLAD step (old + teacher log-probs + TRRD update) on a
batch whose responses are 16 to `max_new` tokens long (a generated batch cut at seeded random
lengths, as EOS would cut it), with fixed micro-batches (8 rows padded to the step's longest row)
and with token budgets (train.max_tokens_per_micro_batch, data/micro_batches.py) of 8 x the
longest row (budget_8x: the fixed plan's micro-batch size, so the same largest micro-batch) and
4 x the longest row (budget_4x: smaller micro-batches, less padding each). Reported:
useful_token_frac (real / processed tokens) and step time of each, and the time ratios. Target:
useful_token_frac >= 0.9 with budgets, and the step time falling about in proportion to the
processed tokens (attention grows faster than linearly in the width, so a little more than that
is possible).

Output: bench/results/step.json (under "full" or "quick"), and as the last line
    RESULT step rlad_over_grpo=<overhead fraction> teacher_share=<fraction> ...
        useful_frac_budget_8x=<> useful_frac_budget_4x=<> time_ratio_8x=<budget / fixed step
        time> time_ratio_4x=<> budget_target_met=<best useful_token_frac >= 0.9>
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from bench.report import write_result



def _sizes(quick: bool) -> dict:
    if quick:
        return dict(student=dict(num_layers=2, hidden_size=128, ffn_hidden_size=384),
                    teacher=dict(num_layers=4, hidden_size=256, ffn_hidden_size=768),
                    prompts=8, group=4, new_tokens=32, reps=4, varied_max=128)
    return dict(student=dict(num_layers=4, hidden_size=256, ffn_hidden_size=768),
                teacher=dict(num_layers=8, hidden_size=512, ffn_hidden_size=1536),
                prompts=16, group=8, new_tokens=64, reps=5, varied_max=256)


def run_overrides(cfg: dict, tokenizer: Path, work: Path) -> list[str]:
    """The `rlad train` overrides of the benchmarked run (random weights, no evaluation, no
    checkpoints written during the step)."""
    def model(role: str) -> list[str]:
        sizes = {**cfg[role], "vocab_size": 4096, "num_attention_heads": 8,
                 "num_query_groups": 4, "max_position_embeddings": 512, "init_method_std": 0.05}
        return [f"{role}.preset=tiny-llama", f"{role}.random_init=true",
                f"{role}.tokenizer={tokenizer}",
                *(f"{role}.spec.{k}={v}" for k, v in sizes.items())]
    return [f"run_dir={work / 'run'}", "seed=1", *model("student"), *model("teacher"),
            "data.task=chain_sum", "data.format=compact", "data.reward=format",
            "data.check_steps=false", "data.train_size=256", "data.heldout_size=8",
            f"rollout.prompts_per_step={cfg['prompts']}", f"rollout.group_size={cfg['group']}",
            f"rollout.max_new_tokens={cfg['new_tokens']}", "train.micro_batch_size=8",
            "train.mini_batches=1", "optimizer.lr=1e-5", "eval.at_start=false",
            "eval.teacher=false", "logging.progress=false", "logging.tensorboard=false",
            "checkpoint.resume=false"]


def cut_responses(rollout, lengths, pad_id=0):
    """The rollout with row i's response cut to lengths[i] tokens (padding after), as if EOS
    had come there; per-token fields beyond the longest row are dropped."""
    import dataclasses
    total = rollout.prompt_lengths + lengths
    cols = torch.arange(rollout.seq_len)[None]
    keep = cols < total[:, None]
    width = int(total.max())
    return dataclasses.replace(
        rollout, tokens=torch.where(keep, rollout.tokens, pad_id)[:, :width],
        response_lengths=lengths.clone(), loss_mask=(rollout.loss_mask & keep)[:, :width],
        sampler_logprobs=torch.where(keep, rollout.sampler_logprobs, 0.0)[:, :width])


def varied_lengths(student, teacher, prompts, cfg, restore, generate, GenerationConfig) -> dict:
    """RLAD step on responses of 16..varied_max tokens: fixed micro-batches vs token budgets."""
    from rlad_megatron.data.batch import TrainBatch
    from rlad_megatron.data.micro_batches import fixed_plan, row_lengths, token_budget_plan
    from rlad_megatron.data.selection import select_teacher_tokens
    from rlad_megatron.models.forward import forward_logprobs
    from rlad_megatron.config.algorithms import TRRDLossConfig
    from rlad_megatron.train.step import forward_backward, optimizer_step

    longest = cfg["varied_max"]
    full = generate(student, prompts, GenerationConfig(
        max_new_tokens=longest, samples_per_prompt=cfg["group"], progress=False), seed=2)
    g = torch.Generator().manual_seed(3)
    lengths = torch.randint(16, longest + 1, (full.batch_size,), generator=g)
    rollout = cut_responses(full, lengths)
    adv = torch.randn(rollout.batch_size, generator=g)
    real = row_lengths(rollout.prompt_lengths, rollout.response_lengths)
    mbs = 8
    plans = {"fixed": fixed_plan(rollout.batch_size, rollout.seq_len, mbs),
             "budget_8x": token_budget_plan(real, mbs * rollout.seq_len),
             "budget_4x": token_budget_plan(real, mbs // 2 * rollout.seq_len)}

    def one(plan) -> dict:
        times = {}
        t = time.perf_counter()
        old = forward_logprobs(student, rollout.tokens, plan=plan)
        teacher_lp = forward_logprobs(teacher, rollout.tokens, plan=plan, fused=True)
        times["logprobs_s"] = time.perf_counter() - t
        batch = TrainBatch.from_rollout(rollout, rewards=adv, advantages=adv, old_logprobs=old,
                                        teacher_logprobs=teacher_lp)
        batch = batch.with_selection(select_teacher_tokens(adv, old, teacher_lp,
                                                           batch.loss_mask))
        t = time.perf_counter()
        metrics = forward_backward(student, batch, TRRDLossConfig().build(step=1), plan=plan)
        optimizer_step(student)
        times["update_s"] = time.perf_counter() - t
        times["step_s"] = times["logprobs_s"] + times["update_s"]
        times["loss"] = metrics["loss/trrd"]
        return times

    runs = {name: [] for name in plans}
    for _ in range(cfg["reps"] + 1):
        for name, plan in plans.items():
            restore()
            runs[name].append(one(plan))
    best = {name: min(r[1:], key=lambda x: x["step_s"]) for name, r in runs.items()}
    out = {"batch": rollout.batch_size, "seq_len": rollout.seq_len,
           "response_lengths": f"16..{longest} uniform", "micro_batch_size": mbs, "best": best}
    fixed_s, fixed_tokens = best["fixed"]["step_s"], plans["fixed"].processed_tokens()
    for name, plan in plans.items():
        out[name] = {"micro_batches": len(plan), "processed_tokens": plan.processed_tokens(),
                     "useful_token_frac": plan.useful_token_frac(real),
                     "time_ratio": best[name]["step_s"] / fixed_s,
                     "processed_ratio": plan.processed_tokens() / fixed_tokens,
                     "loss_equal": abs(best[name]["loss"] - best["fixed"]["loss"]) <= 1e-5 * max(
                         1.0, abs(best["fixed"]["loss"]))}
    out["budget_8x"]["max_tokens_per_micro_batch"] = mbs * rollout.seq_len
    out["budget_4x"]["max_tokens_per_micro_batch"] = mbs // 2 * rollout.seq_len
    out["target_met"] = max(out[n]["useful_token_frac"] for n in ("budget_8x", "budget_4x")) >= 0.9
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    from rlad_megatron.data.miniature.compact import chain_sum_solution
    from rlad_megatron.data.tokenizer_train import train_sentencepiece
    from rlad_megatron.rollout import GenerationConfig, generate
    from rlad_megatron.config.run import load_config
    from rlad_megatron.train.loop import rl_step
    from rlad_megatron.train.setup import setup

    cfg = _sizes(args.quick)
    work = Path(tempfile.mkdtemp(prefix="rlad_bench_step_"))
    tok = train_sentencepiece([f"{a}+{b}-{c}=" + chain_sum_solution(f"{a}+{b}-{c}")
                               for a in range(10) for b in range(10) for c in range(10)],
                              work / "chain_sum_char")
    overrides = run_overrides(cfg, tok, work)
    run = setup(load_config(None, overrides + ["algorithm=rlad"]))
    grpo = dataclasses.replace(run, cfg=load_config(None, overrides + ["algorithm=grpo"]),
                               teacher=None)
    student, teacher = run.student, run.teacher
    weights0 = [p.detach().clone() for m in student.modules for p in m.parameters()]
    opt_state0 = copy.deepcopy(student.optimizer.state_dict())
    sampler0 = copy.deepcopy(run.sampler.state_dict())

    def restore():
        with torch.no_grad():
            for p, w in zip((p for m in student.modules for p in m.parameters()), weights0):
                p.copy_(w)
        student.optimizer.load_state_dict(copy.deepcopy(opt_state0))
        run.sampler.load_state_dict(copy.deepcopy(sampler0))

    def one(variant: str) -> dict:
        r = run if variant == "rlad" else grpo
        r.timer.pop()
        t = time.perf_counter()
        result = rl_step(r, step=1)
        total = time.perf_counter() - t
        times = {k.removeprefix("time/"): v for k, v in r.timer.pop().items()}
        times["step_s"] = total
        times["train_s"] = total - times.get("rollout_s", 0.0) - times.get("reward_s", 0.0)
        times["loss"] = result.metrics[f"loss/{'trrd' if variant == 'rlad' else 'grpo'}"]
        return times

    runs = {"grpo": [], "rlad": []}
    for _ in range(cfg["reps"] + 1):  # the first round warms up
        for variant in ("grpo", "rlad"):
            restore()
            runs[variant].append(one(variant))
    best = {v: min(r[1:], key=lambda x: x["step_s"]) for v, r in runs.items()}
    restore()
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 4096, (int(n),), generator=g).tolist()
               for n in torch.randint(16, 33, (cfg["prompts"],), generator=g)]
    varied = varied_lengths(student, teacher, prompts, cfg, restore, generate, GenerationConfig)
    grpo_s, rlad_s = best["grpo"]["train_s"], best["rlad"]["train_s"]
    overhead = rlad_s / grpo_s - 1
    teacher_share = best["rlad"]["teacher_logprobs_s"] / grpo_s
    full_overhead = best["rlad"]["step_s"] / best["grpo"]["step_s"] - 1
    b = run.cfg.rollout.prompts_per_step * run.cfg.rollout.group_size
    result = {
        "mode": "quick" if args.quick else "full", "config": cfg, "batch": b,
        "measured": "train/loop.py rl_step (rollout, reward, advantages, old and teacher "
                    "log-probs, selection, update)",
        "student_params": student.parameter_count(),
        "teacher_params": teacher.parameter_count(),
        "best": best, "all": runs, "rlad_over_grpo": overhead, "teacher_share": teacher_share,
        "rlad_over_grpo_with_rollout": full_overhead,
        "teacher_share_definition": "teacher log-prob time / grpo training-side time "
                                    "(step without rollout and reward)",
        "target_met": overhead <= teacher_share + 0.05,
        "varied_lengths": varied,
        "env": {"torch": torch.__version__, "cpu_count": os.cpu_count(),
                "machine": platform.machine()},
    }
    write_result("step", result["mode"], result)
    for v in ("grpo", "rlad"):
        print(f"{v}: " + ", ".join(f"{k}={x:.3f}" for k, x in best[v].items()))
    for name in ("fixed", "budget_8x", "budget_4x"):
        v = varied[name]
        print(f"varied lengths, {name}: {v['micro_batches']} micro-batches, useful_token_frac "
              f"{v['useful_token_frac']:.3f}, step {varied['best'][name]['step_s']:.3f}s "
              f"(x{v['time_ratio']:.3f} of fixed; processed tokens x{v['processed_ratio']:.3f})")
    print(f"RESULT step rlad_over_grpo={overhead:.3f} teacher_share={teacher_share:.3f} "
          f"with_rollout={full_overhead:.3f} target_met={result['target_met']} "
          f"useful_frac_fixed={varied['fixed']['useful_token_frac']:.3f} "
          f"useful_frac_budget_8x={varied['budget_8x']['useful_token_frac']:.3f} "
          f"useful_frac_budget_4x={varied['budget_4x']['useful_token_frac']:.3f} "
          f"time_ratio_8x={varied['budget_8x']['time_ratio']:.3f} "
          f"time_ratio_4x={varied['budget_4x']['time_ratio']:.3f} "
          f"budget_target_met={varied['target_met']}")


if __name__ == "__main__":
    main()
