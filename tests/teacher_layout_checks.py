"""A teacher on its own parallel layout (teacher.parallel), checked at 2 ranks (tests/dist) and 4
ranks (tests/dist4): the student's rows go to the teacher's layout and back
(models/teacher_layout.py), and the teacher log-probs are compared with the float64 reference
(tests/reference_llama.py) and with the same teacher built on the student's own layout.

Every megatron call on the teacher's path must take the teacher's groups explicitly: with
`globals_unset()` megatron's parallel_state globals are all None during the teacher's pass, so any
global read fails (an assertion in megatron's getters or a None group) instead of silently using
the student's layout.
"""

import contextlib

import torch

from distributed_helpers import assert_all_ranks, assert_close_all_ranks
from model_checks import LOGPROB_ATOL, LOGPROB_RTOL, load_weights, random_tokens, tiny_spec
from reference_llama import random_hf_weights, token_logprobs_and_entropy
from rlad_megatron.data.micro_batches import token_budget_plan
from rlad_megatron.models import checkpoint as mckpt
from rlad_megatron.models.build import build_teacher
from rlad_megatron.models.forward import forward_logprobs
from rlad_megatron.models.teacher_layout import layout_logprobs
from rlad_megatron.models.teacher_stream import stream_teacher
from rlad_megatron.runtime import ParallelConfig
from rlad_megatron.runtime.teacher_parallel import TeacherParallelConfig, init_teacher_parallel


@contextlib.contextmanager
def globals_unset():
    """megatron's parallel_state layout globals (every group, rank, world size and rank list; not
    its scratch memory buffers) set to None for the block, then restored: a read of any of them
    inside fails."""
    from megatron.core import parallel_state as ps

    saved = {k: v for k, v in vars(ps).items()
             if k.startswith("_") and k.isupper() and "MEMORY_BUFFER" not in k}
    for key in saved:
        setattr(ps, key, None)
    try:
        yield
    finally:
        for key, value in saved.items():
            setattr(ps, key, value)


def student_rows(spec, student, *, b_per_rank=2, s=12):
    """This student DP rank's rows of one global batch (ranks trim to different widths, so the
    exchange pads), and the float64 reference log-probs of those rows."""
    tokens = random_tokens(spec, b=b_per_rank * student.dp, s=s, seed=7)
    lo = student.dp_rank * b_per_rank
    width = s - student.dp_rank % 2  # odd DP ranks' rows one column shorter
    return tokens[lo:lo + b_per_rank, :width]


def check_teacher_layout(student, teacher_cfg: TeacherParallelConfig, *, arch="tiny-llama",
                         vocab=250, temperature=0.9, spec_kw=None, max_tokens=0, b_per_rank=2,
                         streamed=False):
    """student: the `parallel` fixture's Parallel; teacher_cfg: the teacher's own sizes;
    streamed: the teacher's layers in host memory (teacher.offload=stream)."""
    spec = tiny_spec(arch, vocab_size=vocab, **(spec_kw or {}))
    weights = random_hf_weights(spec, seed=5)
    student_cfg = ParallelConfig(tensor=student.tp, pipeline=student.pp,
                                 virtual_pipeline=student.vpp)
    tpar = init_teacher_parallel(teacher_cfg, student_cfg, student)
    assert_all_ranks(tpar.detached and tpar is not student,
                     f"teacher layout {teacher_cfg} should have groups of its own")
    own = build_teacher(spec, tpar)
    load_weights(own, weights)
    if streamed:
        own = stream_teacher(own, window=1)
    shared = build_teacher(spec, student)
    load_weights(shared, weights)

    rows = student_rows(spec, student, b_per_rank=b_per_rank)
    ref, _ = token_logprobs_and_entropy(spec, weights, rows, temperature)
    plan = None
    if max_tokens:  # the student's token-budget plan: positions past a row's width are 0
        lengths = torch.tensor([rows.shape[1] - i for i in range(rows.shape[0])])
        plan = token_budget_plan(lengths, max_tokens)
        for r, w in zip(plan.rows, plan.widths):
            ref[r, w:] = 0.0
    with globals_unset():
        lp = layout_logprobs(own, student, rows, plan=plan, micro_batch_size=1,
                             max_tokens=max_tokens, temperature=temperature)
    what = f"student {student.describe()} -> teacher {tpar.describe()}"
    assert_close_all_ranks(lp, ref, rtol=LOGPROB_RTOL, atol=LOGPROB_ATOL,
                           what=f"{what}: teacher log-probs vs float64")
    base = forward_logprobs(shared, rows, plan=plan, micro_batch_size=None if plan else 1,
                            temperature=temperature, fused=True)
    if not student.is_last_stage:
        base = lp  # the shared pass leaves its result on the student's last stage only
    assert_close_all_ranks(lp, base, rtol=LOGPROB_RTOL, atol=LOGPROB_ATOL,
                           what=f"{what}: own layout vs shared layout")
    return lp, ref


def check_teacher_checkpoint(student, teacher_cfg: TeacherParallelConfig, root, *,
                             arch="tiny-qwen3", vocab=250, temperature=1.0):
    """Save a teacher at the student's layout, load it into the teacher's own layout (globals
    unset), and compare its log-probs of the student's rows with float64."""
    spec = tiny_spec(arch, vocab_size=vocab)
    weights = random_hf_weights(spec, seed=11)
    writer = build_teacher(spec, student)
    load_weights(writer, weights)
    mckpt.save(root, 1, mckpt.model_sharded_state_dict(writer.chunks), spec=spec)
    student_cfg = ParallelConfig(tensor=student.tp, pipeline=student.pp,
                                 virtual_pipeline=student.vpp)
    tpar = init_teacher_parallel(teacher_cfg, student_cfg, student)
    own = build_teacher(spec, tpar)
    rows = student_rows(spec, student)
    with globals_unset():
        mckpt.load_model(root, own.chunks, par=tpar)
        lp = layout_logprobs(own, student, rows, micro_batch_size=1, temperature=temperature)
    ref, _ = token_logprobs_and_entropy(spec, weights, rows, temperature)
    assert_close_all_ranks(lp, ref, rtol=LOGPROB_RTOL, atol=LOGPROB_ATOL,
                           what=f"teacher {tpar.describe()} loaded from a checkpoint saved at "
                                f"{student.describe()}: log-probs vs float64")
