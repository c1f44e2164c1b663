"""Student and teacher GPTModels under one Megatron parallel state, against a float64 reference.

Guards: the HF -> megatron weight layout (fused QKV per query group, gate/up per TP rank, padded
vocabulary rows), megatron's forward under TP, PP and interleaved PP through our schedule runner,
the vocab-parallel log-prob/entropy kernels and their gradients inside the model, the frozen
teacher, and the build-time layout errors. A failure in the float64 comparisons usually means a
weight-layout or alignment (off-by-one) bug; one limited to a layout points at that layout's path.
"""

import pytest
import torch

from distributed_helpers import assert_all_ranks
from model_checks import check_forward_logprobs, check_gradients, random_tokens
from rlad_megatron import ops
from rlad_megatron.models.build import OptimizerSettings, build_student, build_teacher
from rlad_megatron.models.forward import run_schedule, split_micro_batches
from rlad_megatron.models.spec import get_preset

LAYOUTS = [(1, 1), (2, 1), (1, 2), (1, 2, 2)]
LAYOUT_IDS = ["dp2", "tp2", "pp2", "pp2-vpp2"]


@pytest.mark.parametrize("parallel", LAYOUTS, indirect=True, ids=LAYOUT_IDS)
@pytest.mark.parametrize("arch,vocab,temperature", [
    ("tiny-llama", 256, 1.0), ("tiny-qwen2", 250, 0.7), ("tiny-qwen3", 256, 1.3)],
    ids=["llama", "qwen2-padded-vocab-temp0.7", "qwen3-tied-temp1.3"])
def test_forward_logprobs_match_float64_reference(parallel, arch, vocab, temperature):
    check_forward_logprobs(parallel, arch=arch, vocab_size=vocab, temperature=temperature)


@pytest.mark.parametrize("parallel", LAYOUTS, indirect=True, ids=LAYOUT_IDS)
@pytest.mark.parametrize("arch,vocab", [("tiny-llama", 250), ("tiny-qwen3", 256)],
                         ids=["llama-padded-vocab", "qwen3-tied"])
def test_logprob_and_entropy_gradients_match_float64_reference(parallel, arch, vocab):
    check_gradients(parallel, arch=arch, vocab_size=vocab)


@pytest.mark.parametrize("parallel", [(2, 1), (1, 2)], indirect=True, ids=["tp2", "pp2"])
def test_teacher_of_another_size_is_frozen_and_bit_identical_after_student_step(parallel):
    student_spec = get_preset("tiny-llama", num_layers=2)
    teacher_spec = get_preset("tiny-llama", num_layers=4, hidden_size=128, ffn_hidden_size=256,
                              num_attention_heads=8, num_query_groups=4)
    student = build_student(student_spec, parallel, OptimizerSettings(lr=1e-2))
    teacher = build_teacher(teacher_spec, parallel, student_spec=student_spec)
    before = {n: p.detach().clone() for m in teacher.modules for n, p in m.named_parameters()}
    assert_all_ranks(all(not p.requires_grad for m in teacher.modules for p in m.parameters()),
                     "teacher parameters must not require grad")
    assert_all_ranks(all(not m.training for m in teacher.modules), "teacher must be in eval mode")
    assert_all_ranks(not any(hasattr(c, "zero_grad_buffer") for c in teacher.chunks),
                     "teacher must not be DDP-wrapped")

    tokens = random_tokens(student_spec, b=2, s=8)
    for chunk in student.chunks:
        chunk.zero_grad_buffer()
    student.optimizer.zero_grad()

    def forward_step(chunk, mb):
        out = chunk(input_ids=mb.tokens, position_ids=mb.position_ids,
                    attention_mask=mb.attention_mask)
        count = torch.tensor(mb.tokens.numel(), dtype=torch.int)
        return out, lambda logits: (-ops.token_logprobs(logits, mb.labels, parallel.tp_group).sum(),
                                    count, {})

    run_schedule(student, split_micro_batches(tokens, 1), forward_step, forward_only=False,
                 collect_non_loss_data=False)
    s_before = [p.detach().clone() for m in student.modules for p in m.parameters()]
    from rlad_megatron.runtime.cpu_shims import cuda_to_cpu
    with cuda_to_cpu():
        ok, grad_norm, _ = student.optimizer.step()
    assert_all_ranks(bool(ok) and grad_norm > 0, f"student step failed: ok={ok} norm={grad_norm}")
    moved = any(not torch.equal(a, p) for a, p in zip(s_before, (p for m in student.modules
                                                                 for p in m.parameters())))
    assert_all_ranks(moved, "the student's weights did not change")
    after = {n: p for m in teacher.modules for n, p in m.named_parameters()}
    same = all(torch.equal(before[n], after[n]) for n in before)
    assert_all_ranks(same, "teacher weights changed after a student optimizer step")
    assert_all_ranks(all(p.grad is None for p in after.values()), "teacher has gradients")
    assert_all_ranks(teacher.parameter_bytes() > student.parameter_bytes() > 0,
                     f"parameter memory: teacher {teacher.parameter_bytes()} student "
                     f"{student.parameter_bytes()}")


@pytest.mark.parametrize("parallel", [(2, 1)], indirect=True, ids=["tp2"])
def test_build_errors_name_both_values(parallel):
    bad_heads = get_preset("tiny-llama", num_attention_heads=3, num_query_groups=3,
                           hidden_size=48)
    with pytest.raises(ValueError, match=r"parallel.tensor: 2 does not divide student.num_attention_heads: 3"):
        build_student(bad_heads, parallel, OptimizerSettings())
    bad_groups = get_preset("tiny-llama", num_query_groups=1)
    with pytest.raises(ValueError, match=r"parallel.tensor: 2 does not divide teacher.num_query_groups: 1"):
        build_teacher(bad_groups, parallel)
    other_vocab = get_preset("tiny-llama", vocab_size=300)
    with pytest.raises(ValueError, match=r"student.vocab_size=256.*teacher.vocab_size=300"):
        build_teacher(other_vocab, parallel, student_spec=get_preset("tiny-llama"))


@pytest.mark.parametrize("parallel", [(1, 2)], indirect=True, ids=["pp2"])
def test_pipeline_must_divide_layers(parallel):
    with pytest.raises(ValueError, match=r"parallel.pipeline: 2 does not divide teacher.num_layers: 3"):
        build_teacher(get_preset("tiny-llama", num_layers=3), parallel)
