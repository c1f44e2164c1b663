"""The Hugging Face <-> megatron map: one table says, per tensor, everything a conversion needs.

Every entry names the HF tensor(s), megatron's local-spec parameter name (what a CPU-built
GPTModel chunk has), the dist-checkpoint key (transformer-engine names, layers stacked on a
leading axis: megatron's local spec maps its norms onto the TE names when it saves), the HF
shapes, and the kind of split/merge. Import (hf_to_megatron.py: rank_shard), export
(megatron_to_hf.py: split_global, hf_source, dist_shapes), in-memory loading (layout.py),
random initialisation (init_weights.py), the HF directory checks (hf_reader.py) and the tests
all read this table; adding a tensor or an architecture is one entry here.

Per layer (HF under model.layers.L., megatron under decoder.layers.l., dist keys under
decoder.layers. with a leading layer axis); "=" means the dist key is the local name:

  HF                               megatron local / dist key                       kind
  input_layernorm.weight           input_layernorm.weight /                        replicated
                                     self_attention.linear_qkv.layer_norm_weight
  self_attn.{q,k,v}_proj.weight    self_attention.linear_qkv.weight =              qkv
  self_attn.{q,k,v}_proj.bias      self_attention.linear_qkv.bias = (qkv_bias)     qkv
  self_attn.{q,k}_norm.weight      self_attention.{q,k}_layernorm.weight = (qk_layernorm)
  self_attn.o_proj.weight          self_attention.linear_proj.weight =             row
  post_attention_layernorm.weight  pre_mlp_layernorm.weight /                      replicated
                                     mlp.linear_fc1.layer_norm_weight
  mlp.{gate,up}_proj.weight        mlp.linear_fc1.weight =                         fc1
  mlp.down_proj.weight             mlp.linear_fc2.weight =                         row
Global:
  model.embed_tokens.weight        embedding.word_embeddings.weight =              vocab
  model.norm.weight                decoder.final_layernorm.weight =                replicated
  lm_head.weight (untied only)     output_layer.weight =                           vocab

L is the global layer; megatron parameter names use the chunk-local layer index l.

Kinds, and the TP rank r's shard of a full tensor (tp ranks):
  replicated  the whole tensor
  row         columns [r*n/tp, (r+1)*n/tp) (row-parallel linear: input dim split)
  qkv         the query groups [r*G/tp, (r+1)*G/tp), each [its q heads; k; v] (merge_qkv);
              in the dist checkpoint the global tensor is the TP=1 merge
  fc1         [gate rows of r; up rows of r]; the global dist tensor is [gate; up]
  vocab       rows [r*Vp/tp, (r+1)*Vp/tp) of the tensor padded with zero rows to Vp; the dist
              tensor has the writer's Vp rows, the first V of which are the vocabulary
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from rlad_megatron.models.spec import ARCHITECTURES

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
    shapes: tuple[tuple[str, ...], ...]
    """Shape of each HF tensor, in the dimensions of `dims` (h, f, d, q, kv, V)."""
    when: Optional[str] = None
    """The ModelSpec flag that adds this entry (qkv_bias, qk_layernorm); None: always."""


def _entry(hf, local, kind, shapes, dist=None, when=None) -> Entry:
    hf = (hf,) if isinstance(hf, str) else tuple(hf)
    return Entry(hf, local, dist or local, kind, shapes, when)


def _qkv(kind: str) -> tuple[str, ...]:
    return tuple(f"self_attn.{x}_proj.{kind}" for x in "qkv")


LAYER = (  # in the order HF lists one layer's tensors
    _entry("input_layernorm.weight", "input_layernorm.weight", REPLICATED, (("h",),),
           dist="self_attention.linear_qkv.layer_norm_weight"),
    _entry(_qkv("weight"), "self_attention.linear_qkv.weight", QKV,
           (("q", "h"), ("kv", "h"), ("kv", "h"))),
    _entry(_qkv("bias"), "self_attention.linear_qkv.bias", QKV, (("q",), ("kv",), ("kv",)),
           when="qkv_bias"),
    _entry("self_attn.q_norm.weight", "self_attention.q_layernorm.weight", REPLICATED,
           (("d",),), when="qk_layernorm"),
    _entry("self_attn.k_norm.weight", "self_attention.k_layernorm.weight", REPLICATED,
           (("d",),), when="qk_layernorm"),
    _entry("self_attn.o_proj.weight", "self_attention.linear_proj.weight", ROW, (("h", "q"),)),
    _entry("post_attention_layernorm.weight", "pre_mlp_layernorm.weight", REPLICATED,
           (("h",),), dist="mlp.linear_fc1.layer_norm_weight"),
    _entry(("mlp.gate_proj.weight", "mlp.up_proj.weight"), "mlp.linear_fc1.weight", FC1,
           (("f", "h"), ("f", "h"))),
    _entry("mlp.down_proj.weight", "mlp.linear_fc2.weight", ROW, (("h", "f"),)),
)
EMBEDDING = _entry("model.embed_tokens.weight", "embedding.word_embeddings.weight", VOCAB,
                   (("V", "h"),))
FINAL_NORM = _entry("model.norm.weight", "decoder.final_layernorm.weight", REPLICATED,
                    (("h",),))
OUTPUT = _entry("lm_head.weight", "output_layer.weight", VOCAB, (("V", "h"),))
TIED_OUTPUT = _entry("model.embed_tokens.weight", "output_layer.weight", VOCAB, (("V", "h"),),
                     dist="embedding.word_embeddings.weight")
"""With tied embeddings a last pipeline stage holds a copy of the embedding as output_layer."""

IGNORED_HF = ("rotary_emb.inv_freq",)
"""HF tensors that megatron recomputes (old checkpoints store them)."""


def dims(spec) -> dict[str, int]:
    """The sizes the entries' shapes are written in."""
    d = spec.head_dim
    return {"h": spec.hidden_size, "f": spec.ffn_hidden_size, "d": d, "V": spec.vocab_size,
            "q": spec.num_attention_heads * d, "kv": spec.num_query_groups * d}


def layer_map(spec) -> tuple[Entry, ...]:
    """The entries of one layer of `spec`, in HF order."""
    if spec.arch not in ARCHITECTURES:
        raise ValueError(f"no key map for arch {spec.arch!r}; known: {', '.join(ARCHITECTURES)}")
    return tuple(e for e in LAYER if e.when is None or getattr(spec, e.when))


def global_entries(spec) -> tuple[Entry, ...]:
    return (EMBEDDING, FINAL_NORM) + (() if spec.tie_embeddings else (OUTPUT,))


def entry_shapes(entry: Entry, spec) -> list[tuple[int, ...]]:
    """The shape of each HF tensor of `entry` for `spec`."""
    size = dims(spec)
    return [tuple(size[x] for x in shape) for shape in entry.shapes]


def hf_entries(spec) -> list[tuple[str, Entry]]:
    """(HF name prefix, entry) of every tensor group of `spec`, in HF's order."""
    first, *rest = [("", e) for e in global_entries(spec)]
    return [first] + [(f"model.layers.{layer}.", e) for layer in range(spec.num_layers)
                      for e in layer_map(spec)] + rest


def hf_shapes(spec) -> dict[str, tuple[int, ...]]:
    """The HF state dict of `spec`: name -> shape, in HF's order."""
    return {prefix + n: shape for prefix, e in hf_entries(spec)
            for n, shape in zip(e.hf, entry_shapes(e, spec))}


def init_kind(entry: Entry, hf_name: str) -> str:
    """What a freshly initialised tensor is: norm (ones), bias (zeros), embedding, out_proj
    (a row-parallel output projection, scaled down with depth) or weight."""
    if entry.kind == REPLICATED:
        return "norm"
    if hf_name.endswith(".bias"):
        return "bias"
    return {VOCAB: "embedding", ROW: "out_proj"}.get(entry.kind, "weight")


def dist_shapes(spec, padded_vocab: int) -> dict[str, tuple[int, ...]]:
    """Global dist-checkpoint key -> shape (vocabulary rows: `padded_vocab`)."""
    out = {}
    for e in global_entries(spec):
        shape = entry_shapes(e, spec)[0]
        out[e.dist] = (padded_vocab, *shape[1:]) if e.kind == VOCAB else shape
    for e in layer_map(spec):
        parts = entry_shapes(e, spec)
        shape = (sum(p[0] for p in parts), *parts[0][1:])
        out[f"decoder.layers.{e.dist}"] = (spec.num_layers, *shape)
    return out


# --- the fusions ------------------------------------------------------------------------------

def merge_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              num_query_groups: int) -> torch.Tensor:
    """[nq*d, ...], [ng*d, ...], [ng*d, ...] -> megatron's grouped [ng*(nq/ng + 2)*d, ...]: per
    query group g, [q heads of g; k_g; v_g], so a TP shard is a contiguous run of whole groups."""
    qs, ks, vs = q.chunk(num_query_groups), k.chunk(num_query_groups), v.chunk(num_query_groups)
    return torch.cat([torch.cat(group) for group in zip(qs, ks, vs)])


def split_qkv(qkv: torch.Tensor, num_query_groups: int, heads_per_group: int,
              head_dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of merge_qkv."""
    groups = qkv.reshape(num_query_groups, (heads_per_group + 2) * head_dim, *qkv.shape[1:])
    q, k, v = groups.split([heads_per_group * head_dim, head_dim, head_dim], dim=1)
    return (q.reshape(-1, *qkv.shape[1:]), k.reshape(-1, *qkv.shape[1:]),
            v.reshape(-1, *qkv.shape[1:]))


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
        in_dim = entry_shapes(entry, spec)[0][1]
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
