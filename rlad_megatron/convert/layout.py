"""Where each Hugging Face tensor lives in a megatron GPTModel chunk, and how it is sharded.

Canonical (Hugging Face Llama/Qwen2/Qwen3) names -> megatron local-spec parameter names:

  model.embed_tokens.weight                  embedding.word_embeddings.weight      [V/tp, h] rows
  model.layers.L.input_layernorm.weight      decoder.layers.l.input_layernorm.weight
  model.layers.L.self_attn.{q,k,v}_proj.*    decoder.layers.l.self_attention.linear_qkv.*  (fused)
  model.layers.L.self_attn.{q,k}_norm.weight decoder.layers.l.self_attention.{q,k}_layernorm.weight
  model.layers.L.self_attn.o_proj.weight     decoder.layers.l.self_attention.linear_proj.weight [h, q/tp]
  model.layers.L.post_attention_layernorm.w  decoder.layers.l.pre_mlp_layernorm.weight
  model.layers.L.mlp.{gate,up}_proj.weight   decoder.layers.l.mlp.linear_fc1.weight  (fused)
  model.layers.L.mlp.down_proj.weight        decoder.layers.l.mlp.linear_fc2.weight  [h, f/tp]
  model.norm.weight                          decoder.final_layernorm.weight
  lm_head.weight (untied only)               output_layer.weight                   [V/tp, h] rows

L is the global layer, l the chunk-local one (chunk.decoder.layers[l].layer_number - 1 == L).

Fused layouts (both are what megatron's column-parallel split expects):
  linear_qkv: grouped by query group g = 0..ng-1: [q heads of g; k_g; v_g] along dim 0, so a TP
    shard is a contiguous run of whole groups.
  linear_fc1: per TP rank r: [gate rows of r; up rows of r]; the TP=1 tensor is [gate; up], but a
    TP shard is NOT a contiguous slice of it.
Vocabulary tensors are padded with zero rows to the padded size, then split by rows.
"""

from __future__ import annotations

from typing import Callable

import torch


def merge_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_query_groups: int) -> torch.Tensor:
    """[nq*d, ...], [ng*d, ...], [ng*d, ...] -> megatron's grouped [ng*(nq/ng + 2)*d, ...]."""
    qs, ks, vs = q.chunk(num_query_groups), k.chunk(num_query_groups), v.chunk(num_query_groups)
    return torch.cat([torch.cat(group) for group in zip(qs, ks, vs)])


def split_qkv(qkv: torch.Tensor, num_query_groups: int, heads_per_group: int,
              head_dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of merge_qkv."""
    groups = qkv.reshape(num_query_groups, (heads_per_group + 2) * head_dim, *qkv.shape[1:])
    q, k, v = groups.split([heads_per_group * head_dim, head_dim, head_dim], dim=1)
    return (q.reshape(-1, *qkv.shape[1:]), k.reshape(-1, *qkv.shape[1:]),
            v.reshape(-1, *qkv.shape[1:]))


def fc1_shard(gate: torch.Tensor, up: torch.Tensor, tp: int, rank: int) -> torch.Tensor:
    return torch.cat([gate.chunk(tp)[rank], up.chunk(tp)[rank]])


def pad_rows(weight: torch.Tensor, rows: int) -> torch.Tensor:
    if weight.shape[0] == rows:
        return weight
    pad = weight.new_zeros(rows - weight.shape[0], *weight.shape[1:])
    return torch.cat([weight, pad])


def global_layer(chunk, local: int) -> int:
    return chunk.decoder.layers[local].layer_number - 1


def shard_for_param(name: str, chunk, get: Callable[[str], torch.Tensor], *, spec, tp: int,
                    tp_rank: int, padded_vocab: int) -> torch.Tensor:
    """The value of megatron parameter `name` of `chunk` on TP rank `tp_rank`, built from full
    Hugging Face tensors fetched one at a time with get(hf_name)."""
    parts = name.split(".")
    if name == "embedding.word_embeddings.weight":
        return pad_rows(get("model.embed_tokens.weight"), padded_vocab).chunk(tp)[tp_rank]
    if name == "output_layer.weight":
        src = "model.embed_tokens.weight" if spec.tie_embeddings else "lm_head.weight"
        return pad_rows(get(src), padded_vocab).chunk(tp)[tp_rank]
    if name == "decoder.final_layernorm.weight":
        return get("model.norm.weight")
    if parts[:2] != ["decoder", "layers"]:
        raise KeyError(f"no Hugging Face source for megatron parameter {name}")
    hf = f"model.layers.{global_layer(chunk, int(parts[2]))}."
    rest = ".".join(parts[3:])
    if rest in ("self_attention.linear_qkv.weight", "self_attention.linear_qkv.bias"):
        kind = rest.rsplit(".", 1)[1]
        qkv = merge_qkv(*(get(f"{hf}self_attn.{p}_proj.{kind}") for p in "qkv"),
                        spec.num_query_groups)
        return qkv.chunk(tp)[tp_rank]
    if rest == "mlp.linear_fc1.weight":
        return fc1_shard(get(hf + "mlp.gate_proj.weight"), get(hf + "mlp.up_proj.weight"), tp, tp_rank)
    row_parallel = {"self_attention.linear_proj.weight": "self_attn.o_proj.weight",
                    "mlp.linear_fc2.weight": "mlp.down_proj.weight"}
    if rest in row_parallel:
        return get(hf + row_parallel[rest]).chunk(tp, dim=1)[tp_rank]
    replicated = {"input_layernorm.weight": "input_layernorm.weight",
                  "pre_mlp_layernorm.weight": "post_attention_layernorm.weight",
                  "self_attention.q_layernorm.weight": "self_attn.q_norm.weight",
                  "self_attention.k_layernorm.weight": "self_attn.k_norm.weight"}
    if rest in replicated:
        return get(hf + replicated[rest])
    raise KeyError(f"no Hugging Face source for megatron parameter {name}")


@torch.no_grad()
def load_hf_tensors(chunks, get: Callable[[str], torch.Tensor], *, spec, tp: int, tp_rank: int,
                    padded_vocab: int) -> None:
    """Copy full Hugging Face tensors into this rank's megatron chunks (local spec names)."""
    for chunk in chunks:
        module = getattr(chunk, "module", chunk)
        for name, param in module.named_parameters():
            value = shard_for_param(name, module, get, spec=spec, tp=tp, tp_rank=tp_rank,
                                    padded_vocab=padded_vocab)
            if value.shape != param.shape:
                raise ValueError(f"{name}: source shape {tuple(value.shape)} does not match the "
                                 f"model's {tuple(param.shape)} (spec {spec.name or spec.arch})")
            param.copy_(value)
