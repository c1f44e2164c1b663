"""Benchmark: the training-side cost of one RLAD step against one GRPO step on identical
rollouts, side by side, with the phase breakdown.

    python -m bench.step [--quick]

Both variants start from the same rollout batch (generated once by the student) and the same
student weights (restored before every repetition), single process, fp32, 1 thread:

    grpo  old log-probs (student forward-only)                     + update (grpo loss)
    rlad  old log-probs + teacher log-probs (fused forward-only)   + selection + update (trrd)

The paper measured +15.5% for RLAD over GRPO per step (Table 4, rollout included). Target here:
the overhead rlad/grpo - 1 is at most the teacher forward's share of the work plus 5%, where
teacher_share = teacher log-prob time / grpo step time (the extra work the teacher forward adds,
relative to the GRPO step); everything else RLAD adds (selection, the TRRD ratio, its metrics)
must stay within the 5%. The rollout time is measured once and reported, so the full-step
overhead (rollout included, as in the paper) is also printed.

Output: bench/results/step.json (under "full" or "quick"), and as the last line
    RESULT step rlad_over_grpo=<overhead fraction> teacher_share=<fraction> ...
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import time

import torch

from bench.report import write_result



def _sizes(quick: bool) -> dict:
    if quick:
        return dict(student=dict(num_layers=2, hidden_size=128, ffn_hidden_size=384),
                    teacher=dict(num_layers=4, hidden_size=256, ffn_hidden_size=768),
                    prompts=8, group=4, new_tokens=32, reps=3)
    return dict(student=dict(num_layers=4, hidden_size=256, ffn_hidden_size=768),
                teacher=dict(num_layers=8, hidden_size=512, ffn_hidden_size=1536),
                prompts=16, group=8, new_tokens=64, reps=5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    from rlad_megatron.convert.init_weights import random_hf_weights
    from rlad_megatron.convert.layout import load_hf_tensors
    from rlad_megatron.data.batch import TrainBatch
    from rlad_megatron.data.selection import select_teacher_tokens
    from rlad_megatron.models.build import OptimizerSettings, build_student, build_teacher
    from rlad_megatron.models.forward import forward_logprobs
    from rlad_megatron.models.spec import get_preset
    from rlad_megatron.rollout import GenerationConfig, generate
    from rlad_megatron.runtime import ParallelConfig, init_distributed, init_parallel
    from rlad_megatron.train.step import LossSpec, forward_backward, optimizer_step

    cfg = _sizes(args.quick)
    init_distributed(timeout_s=600)
    par = init_parallel(ParallelConfig(seed=0))
    common = dict(vocab_size=4096, num_attention_heads=8, num_query_groups=4,
                  max_position_embeddings=512, init_method_std=0.05)
    s_spec = get_preset("tiny-llama", **common, **cfg["student"], name="bench-student")
    t_spec = get_preset("tiny-llama", **common, **cfg["teacher"], name="bench-teacher")
    student = build_student(s_spec, par, OptimizerSettings(lr=1e-5))
    teacher = build_teacher(t_spec, par, student_spec=s_spec)
    for model, seed in ((student, 1), (teacher, 2)):
        w = random_hf_weights(model.spec, seed=seed)
        load_hf_tensors(model.chunks, w.__getitem__, spec=model.spec, tp=1, tp_rank=0,
                        padded_vocab=model.padded_vocab_size)

    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 4096, (int(n),), generator=g).tolist()
               for n in torch.randint(16, 33, (cfg["prompts"],), generator=g)]
    t0 = time.perf_counter()
    rollout = generate(student, prompts, GenerationConfig(
        max_new_tokens=cfg["new_tokens"], samples_per_prompt=cfg["group"], progress=False), seed=1)
    rollout_s = time.perf_counter() - t0
    b = rollout.batch_size
    adv = torch.randn(b, generator=g)
    mbs = 8
    weights0 = [p.detach().clone() for m in student.modules for p in m.parameters()]
    opt_state0 = copy.deepcopy(student.optimizer.state_dict())

    def restore():
        with torch.no_grad():
            for p, w in zip((p for m in student.modules for p in m.parameters()), weights0):
                p.copy_(w)
        student.optimizer.load_state_dict(copy.deepcopy(opt_state0))

    def one(variant: str) -> dict:
        times = {}
        t = time.perf_counter()
        old = forward_logprobs(student, rollout.tokens, micro_batch_size=mbs)
        times["old_logprobs_s"] = time.perf_counter() - t
        teacher_lp = None
        if variant == "rlad":
            t = time.perf_counter()
            teacher_lp = forward_logprobs(teacher, rollout.tokens, micro_batch_size=mbs, fused=True)
            times["teacher_logprobs_s"] = time.perf_counter() - t
        t = time.perf_counter()
        batch = TrainBatch.from_rollout(rollout, rewards=adv, advantages=adv, old_logprobs=old,
                                        teacher_logprobs=teacher_lp)
        if teacher_lp is not None:
            batch = batch.with_selection(select_teacher_tokens(adv, old, teacher_lp,
                                                               batch.loss_mask))
        times["selection_s"] = time.perf_counter() - t
        t = time.perf_counter()
        loss = LossSpec("trrd" if variant == "rlad" else "grpo", {})
        forward_backward(student, batch, loss, micro_batch_size=mbs)
        optimizer_step(student)
        times["update_s"] = time.perf_counter() - t
        times["step_s"] = sum(times.values())
        return times

    runs = {"grpo": [], "rlad": []}
    for _ in range(cfg["reps"] + 1):  # the first round warms up
        for variant in ("grpo", "rlad"):
            restore()
            runs[variant].append(one(variant))
    best = {v: min(r[1:], key=lambda x: x["step_s"]) for v, r in runs.items()}
    grpo_s, rlad_s = best["grpo"]["step_s"], best["rlad"]["step_s"]
    overhead = rlad_s / grpo_s - 1
    teacher_share = best["rlad"]["teacher_logprobs_s"] / grpo_s
    full_overhead = (rlad_s + rollout_s) / (grpo_s + rollout_s) - 1
    result = {
        "mode": "quick" if args.quick else "full", "config": cfg, "batch": b,
        "seq_len": rollout.seq_len, "student_params": student.parameter_count(),
        "teacher_params": teacher.parameter_count(), "rollout_s": rollout_s,
        "best": best, "all": runs, "rlad_over_grpo": overhead, "teacher_share": teacher_share,
        "rlad_over_grpo_with_rollout": full_overhead,
        "teacher_share_definition": "teacher log-prob time / grpo step time",
        "target_met": overhead <= teacher_share + 0.05,
        "env": {"torch": torch.__version__, "cpu_count": os.cpu_count(),
                "machine": platform.machine()},
    }
    write_result("step", result["mode"], result)
    for v in ("grpo", "rlad"):
        print(f"{v}: " + ", ".join(f"{k}={x:.3f}" for k, x in best[v].items()))
    print(f"rollout (once): {rollout_s:.3f}s for {b} sequences")
    print(f"RESULT step rlad_over_grpo={overhead:.3f} teacher_share={teacher_share:.3f} "
          f"with_rollout={full_overhead:.3f} target_met={result['target_met']}")


if __name__ == "__main__":
    main()
