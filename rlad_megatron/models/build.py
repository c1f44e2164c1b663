"""Build the trainable student and the frozen teacher under one Megatron parallel state.

Both are lists of GPTModel chunks (one per virtual pipeline stage; a single chunk without
interleaving), built from their own ModelSpec and the SAME `Parallel`, so they share TP, PP and DP
groups. Logits leave the model vocab-parallel ([b, s, V/tp], parallel_output=True).

Student: every chunk wrapped in megatron's DistributedDataParallel (contiguous grad buffers,
  DP grad reduction), megatron's optimizer over the chunks, and the config hooks the pipeline
  schedule needs (no_sync_func, finalize_model_grads_func). Per-token loss normalisation is on:
  a loss_func returns (sum, count, metrics) and megatron divides by the global count.
Teacher: requires_grad off, eval mode, no DDP wrapper, no grad buffers, no optimizer state; it is a
  separate object, so it can never end up in the student's checkpoint.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

import torch

from rlad_megatron.models.config import (check_same_vocab, layer_spec, padded_vocab_size,
                                         transformer_config)
from rlad_megatron.models.layout_check import CONFIG_NAMES, TEACHER_NAMES, check_model_layout
from rlad_megatron.models.spec import ModelSpec, RopeScaling
from rlad_megatron.runtime import mcore_compat
from rlad_megatron.runtime.cpu_shims import cuda_to_cpu
from rlad_megatron.runtime.parallel import Parallel

OPTIMIZERS = ("adam", "sgd")
"""megatron.core.optimizer's optimizers (OptimizerConfig.optimizer)."""


@dataclass
class OptimizerSettings:
    """Megatron optimizer settings for the student (megatron.core.optimizer.OptimizerConfig)."""

    name: str = field(default="adam", metadata={"choices": OPTIMIZERS})
    """adam: megatron's Adam (AdamW with weight_decay > 0), the default for training. sgd:
    plain SGD (with sgd_momentum), where a weight moves by lr x its gradient: two runs whose
    gradients agree to round-off end with weights that agree to lr x that round-off, while Adam,
    dividing by the gradient's root mean square, turns round-off on a near-zero gradient into a
    move of up to lr. The tests that compare two code paths through whole runs use it."""
    lr: float = 1e-6
    """Peak learning rate."""
    min_lr: float = 0.0
    """Learning rate at the end of a linear or cosine decay (<= lr; unused by constant)."""
    weight_decay: float = 0.0
    """Weight decay of the matrices (megatron leaves biases and 1-D norm weights out): decoupled
    (AdamW) with adam, added to the gradient (L2) with sgd."""
    adam_beta1: float = 0.9
    """Adam's first-moment decay (name=adam; a changed value is refused with sgd)."""
    adam_beta2: float = 0.999
    """Adam's second-moment decay (name=adam; a changed value is refused with sgd)."""
    adam_eps: float = 1e-8
    """Adam's epsilon (name=adam; a changed value is refused with sgd)."""
    sgd_momentum: float = 0.0
    """SGD's momentum, in [0, 1) (name=sgd; a changed value is refused with adam)."""
    clip_grad: float = 1.0
    """Clip the global gradient norm at this (0: off)."""
    distributed: bool = False
    """megatron's DistributedOptimizer (ZeRO-1). Its state does not checkpoint on CPU without
    transformer-engine/apex in megatron-core 0.16.1, so config/validate.py refuses it when CUDA
    is not available."""


@dataclass
class BuiltModel:
    """A model's chunks on this rank and what it costs."""

    spec: ModelSpec
    chunks: list  # list[GPTModel] (teacher) or list[DistributedDataParallel] (student)
    config: object  # megatron TransformerConfig
    padded_vocab_size: int
    par: Parallel

    @property
    def modules(self) -> list[torch.nn.Module]:
        """The unwrapped GPTModel chunks."""
        return [getattr(c, "module", c) for c in self.chunks]

    def parameter_bytes(self) -> int:
        """Bytes of parameters held by this rank (tied copies on the last stage included)."""
        return sum(p.numel() * p.element_size() for m in self.modules for p in m.parameters())

    def parameter_count(self) -> int:
        return sum(p.numel() for m in self.modules for p in m.parameters())


@dataclass
class Student(BuiltModel):
    optimizer: object = None  # megatron MegatronOptimizer

    def grad_buffer_bytes(self) -> int:
        total = 0
        for chunk in self.chunks:
            for buffer in getattr(chunk, "buffers", []):
                total += buffer.grad_data.numel() * buffer.grad_data.element_size()
        return total

    def optimizer_state_bytes(self) -> int:
        total = 0
        for opt in getattr(self.optimizer, "chained_optimizers", [self.optimizer]):
            inner = getattr(opt, "optimizer", None)
            for state in getattr(inner, "state", {}).values():
                total += sum(t.numel() * t.element_size() for t in state.values()
                             if torch.is_tensor(t))
        return total


@dataclass
class Teacher(BuiltModel):
    pass


def _stage_flags(par: Parallel) -> list[tuple[bool, bool, Optional[int]]]:
    """(pre_process, post_process, vp_stage) for each model chunk on this rank."""
    if not par.vpp:
        return [(par.is_first_stage, par.is_last_stage, None)]
    return [(par.is_first_stage and v == 0, par.is_last_stage and v == par.vpp - 1, v)
            for v in range(par.vpp)]


def build_chunks(spec: ModelSpec, par: Parallel, *, dtype: str = "fp32", role: str = "model",
                 on_host: bool = False):
    """GPTModel chunks for this rank; returns (chunks, TransformerConfig, padded vocab size).
    on_host: parameters are created in host memory (megatron's use_cpu_initialization)."""
    from megatron.core.models.gpt import GPTModel

    spec.validate(prefix=role)
    check_model_layout(spec, tp=par.tp, pp=par.pp, vpp=par.vpp,
                       sequence_parallel=par.sequence_parallel, role=role,
                       names=TEACHER_NAMES if par.detached else CONFIG_NAMES)
    config = transformer_config(spec, par, dtype=dtype, on_host=on_host)
    vocab = padded_vocab_size(spec.vocab_size, spec.make_vocab_size_divisible_by, par.tp)
    rope = spec.rope_scaling
    if rope is not None and rope != RopeScaling(factor=rope.factor):
        fixed = ", ".join(f"{f.name}={f.default:g}" for f in dataclasses.fields(RopeScaling)
                          if f.name != "factor")
        raise ValueError(f"{role}.rope_scaling: megatron-core implements llama3 scaling with "
                         f"{fixed} only; got {rope}")
    chunks = []
    for pre, post, vp_stage in _stage_flags(par):
        # Tied embeddings with PP > 1 copy the embedding with .cuda() at construction (shim D).
        with cuda_to_cpu():
            chunks.append(GPTModel(**mcore_compat.gpt_model_kwargs(
                config=config, transformer_layer_spec=layer_spec(spec), vocab_size=vocab,
                max_sequence_length=spec.max_position_embeddings, pre_process=pre,
                post_process=post, parallel_output=True,
                share_embeddings_and_output_weights=spec.tie_embeddings,
                position_embedding_type="rope", rotary_base=int(spec.rotary_base),
                rope_scaling=rope is not None, rope_scaling_factor=rope.factor if rope else 8.0,
                pg_collection=par.pg_collection, vp_stage=vp_stage)))
    return chunks, config, vocab


def build_teacher(spec: ModelSpec, par: Parallel, *, dtype: str = "fp32",
                  student_spec: Optional[ModelSpec] = None, on_host: bool = False) -> Teacher:
    """The frozen teacher: no grads, no DDP, no optimizer; eval mode. on_host: built (and then
    loaded) in host memory, for models/teacher_stream.py to stream."""
    if student_spec is not None:
        check_same_vocab(student_spec, spec)
    chunks, config, vocab = build_chunks(spec, par, dtype=dtype, role="teacher", on_host=on_host)
    for chunk in chunks:
        chunk.requires_grad_(False)
        chunk.eval()
    return Teacher(spec=spec, chunks=chunks, config=config, padded_vocab_size=vocab, par=par)


def build_student(spec: ModelSpec, par: Parallel, optim: OptimizerSettings, *,
                  dtype: str = "fp32") -> Student:
    """Trainable student: DDP-wrapped chunks plus megatron's optimizer."""
    from megatron.core.distributed import (DistributedDataParallel,
                                           DistributedDataParallelConfig, finalize_model_grads)
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    chunks, config, vocab = build_chunks(spec, par, dtype=dtype, role="student")
    # Losses are normalised by global counts (tokens or sequences of the whole global batch):
    # every student loss_func returns (sum, count, metrics); the schedule does not divide, DDP
    # sums over DP, and finalize_model_grads divides by the count summed over micro-batches and
    # DP ranks. Must be set before DDP is built (it picks its gradient scaling from it).
    config.calculate_per_token_loss = True
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True, overlap_grad_reduce=False,
        use_distributed_optimizer=optim.distributed)
    wrapped = [DistributedDataParallel(config=config, ddp_config=ddp_config, module=chunk,
                                       disable_bucketing=i > 0)
               for i, chunk in enumerate(chunks)]
    config.no_sync_func = [w.no_sync for w in wrapped] if len(wrapped) > 1 else wrapped[0].no_sync
    config.finalize_model_grads_func = finalize_model_grads
    opt_config = OptimizerConfig(
        optimizer=optim.name, lr=optim.lr, min_lr=optim.min_lr, weight_decay=optim.weight_decay,
        adam_beta1=optim.adam_beta1, adam_beta2=optim.adam_beta2, adam_eps=optim.adam_eps,
        sgd_momentum=optim.sgd_momentum,
        clip_grad=optim.clip_grad, use_distributed_optimizer=optim.distributed,
        params_dtype=config.params_dtype, bf16=config.bf16, fp16=config.fp16)
    with cuda_to_cpu():
        optimizer = get_megatron_optimizer(opt_config, wrapped)
    return Student(spec=spec, chunks=wrapped, config=config, padded_vocab_size=vocab, par=par,
                   optimizer=optimizer)


def memory_report(student: Optional[Student], teacher: Optional[Teacher]) -> dict[str, float]:
    """Parameter (and student grad/optimizer) memory held by this rank, in MiB."""
    mib = 1024 ** 2
    out = {}
    if student is not None:
        out["memory/student_params_mib"] = student.parameter_bytes() / mib
        out["memory/student_grad_buffer_mib"] = student.grad_buffer_bytes() / mib
        out["memory/student_optimizer_mib"] = student.optimizer_state_bytes() / mib
    if teacher is not None:  # resident bytes; a streamed teacher's layers are in host memory
        out["memory/teacher_params_mib"] = teacher.parameter_bytes() / mib
        if hasattr(teacher, "host_bytes"):
            out["memory/teacher_host_mib"] = teacher.host_bytes() / mib
    return out
