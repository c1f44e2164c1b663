"""Key maps, one table per architecture: Hugging Face tensor <-> megatron tensor, and the sharding.

Three names per tensor: the HF name(s), megatron's local-spec parameter name (what a CPU-built
GPTModel chunk has), and the dist-checkpoint key (transformer-engine names, layers stacked on a
leading axis: megatron's local spec maps its norms onto the TE names when it saves). L is the
global layer; megatron parameter names use the chunk-local layer index.

Per layer (HF under model.layers.L., megatron under decoder.layers.l., dist keys under
decoder.layers. with a leading layer axis); "=" means the dist key is the local name:

  HF                               megatron local / dist key                       kind
  input_layernorm.weight           input_layernorm.weight /                        replicated
                                     self_attention.linear_qkv.layer_norm_weight
  self_attn.{q,k,v}_proj.weight    self_attention.linear_qkv.weight =              qkv
  self_attn.{q,k,v}_proj.bias      self_attention.linear_qkv.bias = (qwen2)        qkv
  self_attn.{q,k}_norm.weight      self_attention.{q,k}_layernorm.weight = (qwen3)  replicated
  self_attn.o_proj.weight          self_attention.linear_proj.weight =             row
  post_attention_layernorm.weight  pre_mlp_layernorm.weight /                      replicated
                                     mlp.linear_fc1.layer_norm_weight
  mlp.{gate,up}_proj.weight        mlp.linear_fc1.weight =                         fc1
  mlp.down_proj.weight             mlp.linear_fc2.weight =                         row
Global:
  model.embed_tokens.weight        embedding.word_embeddings.weight =              vocab
  model.norm.weight                decoder.final_layernorm.weight =                replicated
  lm_head.weight (untied only)     output_layer.weight =                           vocab

Kinds, and the TP rank r's shard of a full tensor (tp ranks):
  replicated  the whole tensor
  row         columns [r*n/tp, (r+1)*n/tp) (row-parallel linear: input dim split)
  qkv         the query groups [r*G/tp, (r+1)*G/tp), each [its q heads; k; v] (convert.layout
              merge_qkv); in the dist checkpoint the global tensor is the TP=1 merge
  fc1         [gate rows of r; up rows of r]; the global dist tensor is [gate; up]
  vocab       rows [r*Vp/tp, (r+1)*Vp/tp) of the tensor padded with zero rows to Vp; the dist
              tensor has the writer's Vp rows, the first V of which are the vocabulary
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from rlad_megatron.convert.layout import merge_qkv, split_qkv

REPLICATED, ROW, QKV, FC1, VOCAB = "replicated", "row", "qkv", "fc1", "vocab"


@dataclass(frozen=True)
class Entry:
    hf: tuple[str, ...]
    """HF name(s); for layer entries, suffixes after "model.layers.L."."""
    local: str
    """megatron local-spec parameter name (suffix after "decoder.layers.l." for layer entries)."""
    dist: str
    """dist-checkpoint key (suffix after "decoder.layers." for layer entries); also the
    transformer-engine parameter name."""
    kind: str


LLAMA_LAYER = (
    Entry(("input_layernorm.weight",), "input_layernorm.weight",
          "self_attention.linear_qkv.layer_norm_weight", REPLICATED),
    Entry(("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"),
          "self_attention.linear_qkv.weight", "self_attention.linear_qkv.weight", QKV),
    Entry(("self_attn.o_proj.weight",), "self_attention.linear_proj.weight",
          "self_attention.linear_proj.weight", ROW),
    Entry(("post_attention_layernorm.weight",), "pre_mlp_layernorm.weight",
          "mlp.linear_fc1.layer_norm_weight", REPLICATED),
    Entry(("mlp.gate_proj.weight", "mlp.up_proj.weight"), "mlp.linear_fc1.weight",
          "mlp.linear_fc1.weight", FC1),
    Entry(("mlp.down_proj.weight",), "mlp.linear_fc2.weight", "mlp.linear_fc2.weight", ROW),
)
QKV_BIAS = (
    Entry(("self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias"),
          "self_attention.linear_qkv.bias", "self_attention.linear_qkv.bias", QKV),
)
QK_NORM = (
    Entry(("self_attn.q_norm.weight",), "self_attention.q_layernorm.weight",
          "self_attention.q_layernorm.weight", REPLICATED),
    Entry(("self_attn.k_norm.weight",), "self_attention.k_layernorm.weight",
          "self_attention.k_layernorm.weight", REPLICATED),
)
LAYER_MAPS = {"llama": LLAMA_LAYER, "qwen2": LLAMA_LAYER + QKV_BIAS, "qwen3": LLAMA_LAYER + QK_NORM}

EMBEDDING = Entry(("model.embed_tokens.weight",), "embedding.word_embeddings.weight",
                  "embedding.word_embeddings.weight", VOCAB)
FINAL_NORM = Entry(("model.norm.weight",), "decoder.final_layernorm.weight",
                   "decoder.final_layernorm.weight", REPLICATED)
OUTPUT = Entry(("lm_head.weight",), "output_layer.weight", "output_layer.weight", VOCAB)
TIED_OUTPUT = Entry(("model.embed_tokens.weight",), "output_layer.weight",
                    "embedding.word_embeddings.weight", VOCAB)
"""With tied embeddings a last pipeline stage holds a copy of the embedding as output_layer."""

IGNORED_HF = ("rotary_emb.inv_freq",)
"""HF tensors that megatron recomputes (old checkpoints store them)."""


def layer_map(spec) -> tuple[Entry, ...]:
    if spec.arch not in LAYER_MAPS:
        raise ValueError(f"no key map for arch {spec.arch!r}; known: {', '.join(LAYER_MAPS)}")
    return LAYER_MAPS[spec.arch]


def global_entries(spec) -> tuple[Entry, ...]:
    return (EMBEDDING, FINAL_NORM) + (() if spec.tie_embeddings else (OUTPUT,))


def hf_shapes(spec) -> dict[str, tuple[int, ...]]:
    """The HF state dict of `spec`: name -> shape, in HF's order."""
    per_layer = layer_shapes(spec)
    wanted = [name for e in layer_map(spec) for name in e.hf]
    out = {"model.embed_tokens.weight": (spec.vocab_size, spec.hidden_size)}
    for layer in range(spec.num_layers):
        for name in sorted(wanted, key=list(per_layer).index):
            out[f"model.layers.{layer}.{name}"] = per_layer[name]
    out["model.norm.weight"] = (spec.hidden_size,)
    if not spec.tie_embeddings:
        out["lm_head.weight"] = (spec.vocab_size, spec.hidden_size)
    return out


def layer_shapes(spec) -> dict[str, tuple[int, ...]]:
    """Shapes of the HF tensors of one layer (every architecture's), by suffix, in HF's order."""
    h, f, d = spec.hidden_size, spec.ffn_hidden_size, spec.head_dim
    nq, ng = spec.num_attention_heads, spec.num_query_groups
    return {
        "input_layernorm.weight": (h,), "self_attn.q_proj.weight": (nq * d, h),
        "self_attn.k_proj.weight": (ng * d, h), "self_attn.v_proj.weight": (ng * d, h),
        "self_attn.q_proj.bias": (nq * d,), "self_attn.k_proj.bias": (ng * d,),
        "self_attn.v_proj.bias": (ng * d,), "self_attn.q_norm.weight": (d,),
        "self_attn.k_norm.weight": (d,), "self_attn.o_proj.weight": (h, nq * d),
        "post_attention_layernorm.weight": (h,), "mlp.gate_proj.weight": (f, h),
        "mlp.up_proj.weight": (f, h), "mlp.down_proj.weight": (h, f)}


def dist_shapes(spec, padded_vocab: int) -> dict[str, tuple[int, ...]]:
    """Global dist-checkpoint key -> shape (vocabulary rows: `padded_vocab`)."""
    hf = hf_shapes(spec)
    out = {}
    for e in global_entries(spec):
        rows = padded_vocab if e.kind == VOCAB else None
        shape = hf[e.hf[0]]
        out[e.dist] = (rows, *shape[1:]) if rows else shape
    for e in layer_map(spec):
        parts = [hf[f"model.layers.0.{n}"] for n in e.hf]
        shape = (sum(p[0] for p in parts), *parts[0][1:])
        out[f"decoder.layers.{e.dist}"] = (spec.num_layers, *shape)
    return out


# --- import: megatron parameter -> this TP rank's shard, read window by window ----------------

Reader = Callable[[str, Optional[slice], Optional[slice]], torch.Tensor]
"""read(hf_name, rows, cols) -> that window of the full HF tensor (None = all)."""


def find_param_entry(spec, name: str) -> tuple[Entry, Optional[int]]:
    """(entry, chunk-local layer or None) of megatron parameter `name` (local or TE spec)."""
    for e in global_entries(spec) + ((TIED_OUTPUT,) if spec.tie_embeddings else ()):
        if name == e.local:
            return e, None
    parts = name.split(".")
    if parts[:2] == ["decoder", "layers"] and len(parts) > 3 and parts[2].isdigit():
        rest = ".".join(parts[3:])
        for e in layer_map(spec):
            if rest in (e.local, e.dist):
                return e, int(parts[2])
    raise KeyError(f"megatron parameter {name} has no Hugging Face source in the {spec.arch} "
                   "key map")


def _span(total: int, tp: int, rank: int) -> slice:
    n = total // tp
    return slice(rank * n, (rank + 1) * n)


def rank_shard(entry: Entry, prefix: str, read: Reader, spec, *, tp: int, tp_rank: int,
               padded_vocab: int) -> torch.Tensor:
    """This TP rank's shard of `entry` (HF names under `prefix`), reading only what it needs."""
    names = [prefix + n for n in entry.hf]
    if entry.kind == REPLICATED:
        return read(names[0], None, None)
    if entry.kind == ROW:
        in_dim = layer_shapes(spec)[entry.hf[0]][1]
        return read(names[0], None, _span(in_dim, tp, tp_rank))
    if entry.kind == FC1:
        rows = _span(spec.ffn_hidden_size, tp, tp_rank)
        return torch.cat([read(n, rows, None) for n in names])
    if entry.kind == QKV:
        d, ng = spec.head_dim, spec.num_query_groups
        groups = ng // tp
        q_rows = _span(spec.num_attention_heads * d, tp, tp_rank)
        kv_rows = _span(ng * d, tp, tp_rank)
        q, k, v = (read(n, r, None) for n, r in zip(names, (q_rows, kv_rows, kv_rows)))
        return merge_qkv(q, k, v, groups)
    if entry.kind == VOCAB:
        per = padded_vocab // tp
        lo, hi = tp_rank * per, min((tp_rank + 1) * per, spec.vocab_size)
        part = read(names[0], slice(lo, hi), None) if hi > lo else None
        pad = per - max(hi - lo, 0)
        if pad == 0:
            return part
        zeros = torch.zeros(pad, spec.hidden_size, dtype=part.dtype if part is not None
                            else torch.float32)
        return zeros if part is None else torch.cat([part, zeros])
    raise AssertionError(entry.kind)


# --- export: one layer's global dist tensor -> HF tensors ------------------------------------

def split_global(entry: Entry, value: torch.Tensor, spec) -> list[torch.Tensor]:
    """Inverse of the fusion for the TP=1 (global) tensor `value` of one layer: HF tensors in
    the order of entry.hf. Vocabulary padding is trimmed."""
    if entry.kind in (REPLICATED, ROW):
        return [value]
    if entry.kind == FC1:
        return list(value.chunk(2))
    if entry.kind == QKV:
        ng = spec.num_query_groups
        return list(split_qkv(value, ng, spec.num_attention_heads // ng, spec.head_dim))
    if entry.kind == VOCAB:
        return [value[:spec.vocab_size]]
    raise AssertionError(entry.kind)


def hf_source(spec, hf_name: str) -> tuple[Entry, Optional[int], int]:
    """(entry, global layer or None, position in entry.hf) that produces HF tensor `hf_name`."""
    for e in global_entries(spec):
        if hf_name in e.hf:
            return e, None, e.hf.index(hf_name)
    parts = hf_name.split(".")
    if parts[:2] == ["model", "layers"] and len(parts) > 3 and parts[2].isdigit():
        rest = ".".join(parts[3:])
        for e in layer_map(spec):
            if rest in e.hf:
                return e, int(parts[2]), e.hf.index(rest)
    raise KeyError(f"{hf_name} is not a tensor of a {spec.arch} model")
