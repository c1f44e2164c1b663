"""Model-level checks shared by the 2-rank (tests/dist) and 4-rank (tests/dist4) launches:
megatron student/teacher results at some layout against the float64 reference of
tests/reference_llama.py, with identical weights loaded through rlad_megatron.convert.layout
(the HF <-> megatron map of convert/keymaps.py)."""

import torch

from distributed_helpers import assert_all_ranks, assert_close_all_ranks
from reference_llama import random_hf_weights, token_logprobs_and_entropy
from rlad_megatron import ops
from rlad_megatron.convert.layout import full_reader, load_hf_tensors, param_shard
from rlad_megatron.models.build import OptimizerSettings, build_student, build_teacher
from rlad_megatron.models.forward import (MicroBatch, align_to_tokens, forward_logprobs,
                                          run_schedule, split_micro_batches)
from rlad_megatron.models.spec import get_preset

# fp32 forward of a 2-4 layer model vs float64: round-off is ~1e-7 relative; 1e-6 (10x that)
# bounds it.
LOGPROB_RTOL = 1e-6
LOGPROB_ATOL = 1e-6
# Gradients accumulate over b*s tokens and several matmuls in fp32: compare relative to the
# largest reference entry of each tensor.
GRAD_REL_TO_MAX = 2e-5

def tiny_spec(name="tiny-llama", **kw):
    # 4 layers so that PP=2 x VPP=2 has one layer per chunk
    return get_preset(name, num_layers=4, **kw)


def random_tokens(spec, b=4, s=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, spec.vocab_size, (b, s), generator=g)


def load_weights(model, weights):
    par = model.par
    load_hf_tensors(model.chunks, lambda n: weights[n].float(), spec=model.spec, tp=par.tp,
                    tp_rank=par.tp_rank, padded_vocab=model.padded_vocab_size)


def dp_slice(par, tokens):
    n = tokens.shape[0] // par.dp
    return tokens[par.dp_rank * n:(par.dp_rank + 1) * n]


def check_forward_logprobs(parallel, *, arch: str, vocab_size: int, temperature: float):
    spec = tiny_spec(arch, vocab_size=vocab_size)
    weights = random_hf_weights(spec, seed=3)
    teacher = build_teacher(spec, parallel)
    load_weights(teacher, weights)
    tokens = random_tokens(spec)
    ref_lp, _ = token_logprobs_and_entropy(spec, weights, tokens, temperature)
    local = dp_slice(parallel, tokens)
    ref_local = dp_slice(parallel, ref_lp)
    for fused in (False, True):
        lp = forward_logprobs(teacher, local, micro_batch_size=1, temperature=temperature,
                              fused=fused)
        if parallel.is_last_stage:
            assert_close_all_ranks(lp, ref_local, rtol=LOGPROB_RTOL, atol=LOGPROB_ATOL,
                                   what=f"{arch} {parallel.describe()} fused={fused} log-probs")
        else:
            assert_all_ranks(lp is None, "non-last stages must return None")


def _reference_grads(spec, weights, tokens, coef_lp, coef_ent, temperature):
    w = {k: v.clone().requires_grad_(True) for k, v in weights.items()}
    lp, ent = token_logprobs_and_entropy(spec, w, tokens, temperature)
    # the student normalises by the global count its loss_func reports: here, sequences
    loss = ((lp * coef_lp).sum() + (ent * coef_ent).sum()) / tokens.shape[0]
    loss.backward()
    return {k: v.grad for k, v in w.items()}


def check_gradients(parallel, *, arch: str, vocab_size: int):
    spec = tiny_spec(arch, vocab_size=vocab_size)
    weights = random_hf_weights(spec, seed=5)
    student = build_student(spec, parallel, OptimizerSettings(lr=1e-3))
    load_weights(student, weights)
    temperature, mbs = 0.9, 1
    tokens = random_tokens(spec, b=4, s=10, seed=7)
    g = torch.Generator().manual_seed(11)
    coef_lp = torch.randn(tokens.shape, generator=g, dtype=torch.float64)
    coef_ent = torch.randn(tokens.shape, generator=g, dtype=torch.float64)
    ref = _reference_grads(spec, weights, tokens, coef_lp, coef_ent, temperature)
    local = dp_slice(parallel, tokens)
    c_lp, c_ent = dp_slice(parallel, coef_lp).float(), dp_slice(parallel, coef_ent).float()

    def forward_step(chunk, mb: MicroBatch):
        out = chunk(input_ids=mb.tokens, position_ids=mb.position_ids,
                    attention_mask=mb.attention_mask)

        def loss_func(logits):
            rows = slice(mb.index * mbs, (mb.index + 1) * mbs)
            lp = align_to_tokens(ops.token_logprobs(logits, mb.labels, parallel.tp_group,
                                                    temperature=temperature, vocab_size=vocab_size))
            ent = align_to_tokens(ops.token_entropy(logits, parallel.tp_group,
                                                    temperature=temperature, vocab_size=vocab_size))
            loss = (lp * c_lp[rows]).sum() + (ent * c_ent[rows]).sum()
            return loss, torch.tensor(mb.tokens.shape[0], dtype=torch.int), {}

        return out, loss_func

    for chunk in student.chunks:
        chunk.zero_grad_buffer()
    run_schedule(student, split_micro_batches(local, mbs), forward_step, forward_only=False,
                 collect_non_loss_data=False)
    assert_student_grads_match(student, ref, parallel, f"gradients ({arch})")


def assert_student_grads_match(student, ref_grads, parallel, what):
    """Every main_grad shard of the student equals the float64 reference gradient's shard.
    Stages hold different parameters: compare locally, then agree once across ranks."""
    failures, compared = [], 0
    for chunk in student.chunks:
        for name, param in chunk.module.named_parameters():
            expected, _ = param_shard(chunk.module, name, full_reader(ref_grads.__getitem__),
                                      spec=student.spec, tp=parallel.tp,
                                      tp_rank=parallel.tp_rank,
                                      padded_vocab=student.padded_vocab_size)
            expected = expected.float()
            scale = max(expected.abs().max().item(), 1e-12)
            worst = (param.main_grad - expected).abs().max().item()
            compared += 1
            if not worst <= GRAD_REL_TO_MAX * scale:
                failures.append(f"{name}: max |diff| {worst:.3e} vs scale {scale:.3e}")
    assert_all_ranks(not failures and compared > 0,
                     f"{what} at {parallel.describe()}: {failures[:5]}")
