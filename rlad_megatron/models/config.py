"""ModelSpec + Parallel -> megatron TransformerConfig and layer spec (the layout check that
models/build.py runs first is models/layout_check.py).

The vocabulary is padded to a multiple of make_vocab_size_divisible_by * TP (Megatron-LM's rule);
padded rows exist in the logits and are excluded by ops/ through the true vocab size.

CPU (no CUDA): fp32, local layer spec, use_cpu_initialization (TP-invariant init: a full master
weight is built and sliced), every fusion off, batch_p2p_sync off (it calls torch.cuda.synchronize).
GPU: the transformer-engine spec when it imports, bf16 if asked.
Interleaved PP with PP=2 uses batch_p2p_comm=False: with batched p2p the prev and next peer are the
same rank and gloo pairs the messages crosswise, giving silently wrong gradients (docs/cpu.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rlad_megatron.models.spec import ModelSpec
from rlad_megatron.runtime import mcore_compat
from rlad_megatron.runtime.cpu_shims import needed as cpu_only
from rlad_megatron.runtime.parallel import Parallel

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def padded_vocab_size(vocab_size: int, divisible_by: int, tp: int) -> int:
    """Smallest multiple of divisible_by * tp that holds vocab_size."""
    multiple = divisible_by * tp
    return -(-vocab_size // multiple) * multiple


def check_same_vocab(student: ModelSpec, teacher: ModelSpec) -> None:
    """Teacher and student must score the same token ids (padded sizes may still differ)."""
    if student.vocab_size != teacher.vocab_size:
        raise ValueError(
            f"teacher and student vocabularies differ: student.vocab_size={student.vocab_size} "
            f"({student.name or student.arch}) vs teacher.vocab_size={teacher.vocab_size} "
            f"({teacher.name or teacher.arch}); RLAD needs one tokenizer for both")


def use_transformer_engine() -> bool:
    return not cpu_only() and mcore_compat.have_transformer_engine()


def transformer_config(spec: ModelSpec, par: Parallel, *, dtype: str = "fp32",
                       on_host: bool = False):
    """The megatron TransformerConfig for `spec` under layout `par`."""
    from megatron.core.transformer import TransformerConfig

    if dtype not in DTYPES:
        raise ValueError(f"dtype: {dtype!r} is not one of {', '.join(DTYPES)}")
    if cpu_only() and dtype != "fp32":
        raise ValueError(f"dtype: {dtype} needs a GPU; on CPU use fp32")
    if par.sequence_parallel and not use_transformer_engine():
        raise ValueError("parallel.sequence_parallel needs the transformer-engine layer spec "
                         "(GPU); megatron's local torch norms refuse it")
    params_dtype = DTYPES[dtype]
    return TransformerConfig(
        num_layers=spec.num_layers,
        hidden_size=spec.hidden_size,
        ffn_hidden_size=spec.ffn_hidden_size,
        num_attention_heads=spec.num_attention_heads,
        num_query_groups=spec.num_query_groups,
        kv_channels=spec.head_dim,
        normalization="RMSNorm",
        layernorm_epsilon=spec.norm_eps,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=spec.qkv_bias,
        qk_layernorm=spec.qk_layernorm,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        init_method_std=spec.init_method_std,
        tensor_model_parallel_size=par.tp,
        pipeline_model_parallel_size=par.pp,
        virtual_pipeline_model_parallel_size=par.vpp,
        sequence_parallel=par.sequence_parallel,
        params_dtype=params_dtype,
        pipeline_dtype=params_dtype,
        bf16=dtype == "bf16",
        fp16=dtype == "fp16",
        use_cpu_initialization=cpu_only() or on_host,
        bias_activation_fusion=False,
        masked_softmax_fusion=False,
        persist_layer_norm=False,
        apply_rope_fusion=False,
        gradient_accumulation_fusion=False,
        bias_dropout_fusion=False,
        batch_p2p_sync=not cpu_only(),
        batch_p2p_comm=not (par.vpp and par.pp == 2),
    )


def layer_spec(spec: ModelSpec):
    """transformer-engine spec on GPU when available, megatron's local spec otherwise.
    Both produce the same dist-checkpoint keys (the local spec maps its norms to TE names)."""
    if use_transformer_engine():
        return mcore_compat.te_layer_spec(qk_layernorm=spec.qk_layernorm)
    return mcore_compat.local_layer_spec(qk_layernorm=spec.qk_layernorm)
