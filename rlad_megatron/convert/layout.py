"""Hugging Face tensors -> this rank's megatron chunks, through the one map of convert/keymaps.py.

    load_shards(chunks, read, spec=, tp=, tp_rank=, padded_vocab=, source=)   windows (import)
    load_hf_tensors(chunks, get, spec=, tp=, tp_rank=, padded_vocab=)         full tensors

Every parameter of a chunk (local or transformer-engine spec names) is looked up in the map and
filled with this TP rank's shard: `rlad convert import` reads windows of memory-mapped
safetensors files; random initialisation, the benches and the tests hand over full (TP=1)
tensors by name. L, the HF layer, is the global layer: chunk.decoder.layers[l].layer_number - 1.
"""

from __future__ import annotations

from typing import Callable

import torch

from rlad_megatron.convert.keymaps import Reader, find_param_entry, rank_shard


def global_layer(chunk, local: int) -> int:
    return chunk.decoder.layers[local].layer_number - 1


def full_reader(get: Callable[[str], torch.Tensor]) -> Reader:
    """A window reader over full tensors fetched by name with get(hf_name)."""
    def read(name, rows, cols):
        tensor = get(name)
        rows = slice(None) if rows is None else rows
        return tensor[rows] if cols is None else tensor[rows, cols]

    return read


def param_shard(module, name: str, read: Reader, *, spec, tp: int, tp_rank: int,
                padded_vocab: int) -> tuple[torch.Tensor, list[str]]:
    """(this TP rank's value of parameter `name` of `module`, the HF tensors it comes from)."""
    entry, local = find_param_entry(spec, name)
    prefix = "" if local is None else f"model.layers.{global_layer(module, local)}."
    value = rank_shard(entry, prefix, read, spec, tp=tp, tp_rank=tp_rank,
                       padded_vocab=padded_vocab)
    return value, [prefix + n for n in entry.hf]


@torch.no_grad()
def load_shards(chunks, read: Reader, *, spec, tp: int, tp_rank: int, padded_vocab: int,
                source: str) -> None:
    """Copy this rank's shard of every parameter of `chunks` from the HF tensors `read` gives
    (`source` names them in errors)."""
    for chunk in chunks:
        module = getattr(chunk, "module", chunk)
        for name, param in module.named_parameters():
            value, hf_names = param_shard(module, name, read, spec=spec, tp=tp, tp_rank=tp_rank,
                                          padded_vocab=padded_vocab)
            if value.shape != param.shape:
                raise ValueError(f"{source}: {', '.join(hf_names)} give {name} the shape "
                                 f"{list(value.shape)} on TP rank {tp_rank}, the model expects "
                                 f"{list(param.shape)}")
            param.copy_(value)


def load_hf_tensors(chunks, get: Callable[[str], torch.Tensor], *, spec, tp: int, tp_rank: int,
                    padded_vocab: int) -> None:
    """Copy full Hugging Face tensors, fetched one at a time with get(hf_name), into this rank's
    megatron chunks."""
    load_shards(chunks, full_reader(get), spec=spec, tp=tp, tp_rank=tp_rank,
                padded_vocab=padded_vocab, source=f"spec {spec.name or spec.arch}")
