"""Student and teacher under one TP=2 Megatron parallel state, checked against TP=1.

  torchrun --nproc-per-node 2 examples/forward_agreement.py     (what `make demo` runs)

Builds a small student and a larger frozen teacher (other depth and width, same vocabulary) from
the same deterministic weights twice: once at TP=2 (the vocabulary sharded over 2 ranks; log-probs
computed without gathering it) and once at TP=1 (DP=2). Prints the per-token log-probs of a batch
under both models, the largest TP=2 vs TP=1 difference, and each model's parameter memory per rank.
"""

import warnings

warnings.filterwarnings("ignore")

import torch  # noqa: E402

from rlad_megatron.convert.init_weights import random_hf_weights  # noqa: E402
from rlad_megatron.convert.layout import load_hf_tensors  # noqa: E402
from rlad_megatron.models.build import (OptimizerSettings, build_student,  # noqa: E402
                                        build_teacher, memory_report)
from rlad_megatron.models.forward import forward_logprobs  # noqa: E402
from rlad_megatron.models.spec import get_preset  # noqa: E402
from rlad_megatron.runtime import ParallelConfig, init_distributed, init_parallel, print0  # noqa: E402

STUDENT = get_preset("tiny-llama", num_layers=2, vocab_size=1000, init_method_std=0.1,
                     name="demo-student")
TEACHER = get_preset("tiny-llama", num_layers=4, hidden_size=128, ffn_hidden_size=384,
                     num_attention_heads=8, num_query_groups=4, vocab_size=1000,
                     init_method_std=0.1, name="demo-teacher")


def logprobs_at(tp: int, tokens: torch.Tensor):
    par = init_parallel(ParallelConfig(tensor=tp))
    student = build_student(STUDENT, par, OptimizerSettings())
    teacher = build_teacher(TEACHER, par, student_spec=STUDENT)
    out = {}
    for name, model, seed in (("student", student, 1), ("teacher", teacher, 2)):
        weights = random_hf_weights(model.spec, seed=seed)
        load_hf_tensors(model.chunks, weights.__getitem__, spec=model.spec, tp=par.tp,
                        tp_rank=par.tp_rank, padded_vocab=model.padded_vocab_size)
        out[name] = forward_logprobs(model, tokens, micro_batch_size=1, fused=name == "teacher")
    return out, par, memory_report(student, teacher), student.padded_vocab_size


def main():
    env = init_distributed()
    if env.world_size != 2:
        raise SystemExit("run with: torchrun --nproc-per-node 2 examples/forward_agreement.py")
    tokens = torch.randint(0, STUDENT.vocab_size, (2, 12),
                           generator=torch.Generator().manual_seed(0))
    tp2, par2, mem, padded = logprobs_at(2, tokens)
    tp1, _, _, _ = logprobs_at(1, tokens)
    print0(f"layout: {par2.describe()}; vocabulary {STUDENT.vocab_size} padded to {padded}: "
           f"{padded // par2.tp} ids per rank, never gathered")
    print0("parameter memory per rank (MiB; Adam state is allocated at the first step): "
           + ", ".join(f"{k.split('/')[1]}={v:.3f}" for k, v in mem.items()))
    for name in ("student", "teacher"):
        a, b = tp2[name], tp1[name]
        print0(f"\n{name}: per-token log p(token | prefix), sequence 0 (TP=2 | TP=1)")
        for t in range(1, tokens.shape[1]):
            print0(f"  t={t:2d} token={tokens[0, t].item():4d}  {a[0, t].item():+.6f} | "
                   f"{b[0, t].item():+.6f}")
        diff = (a - b).abs()[:, 1:].max().item()
        print0(f"{name}: max |TP=2 - TP=1| over {tokens.numel() - tokens.shape[0]} tokens = "
               f"{diff:.2e}  ({'agree' if diff < 1e-5 else 'DISAGREE'})")


if __name__ == "__main__":
    main()
