"""Deterministic random weights in Hugging Face layout, for demos and smoke runs.

Megatron's default initialisation depends on the layout it is built in only through its RNG; these
full (TP=1) tensors are generated once from a seed, tensor by tensor from the map of
convert/keymaps.py, and then sharded by convert/layout.py, so the same seed gives the same model at
any TP/PP.
"""

from __future__ import annotations

import torch

from rlad_megatron.convert.keymaps import entry_shapes, hf_entries, init_kind


def random_hf_weights(spec, seed: int = 0, dtype=torch.float32) -> dict[str, torch.Tensor]:
    """N(0, init_method_std) matrices (output projections scaled by 1/sqrt(2*layers), as megatron
    does), unit norms, zero biases; Hugging Face names."""
    g = torch.Generator().manual_seed(seed)
    std = spec.init_method_std
    out_std = std / (2.0 * spec.num_layers) ** 0.5
    groups = hf_entries(spec)
    w = {}
    # the global tensors first: the draws (and so the weights of a seed) stay as they were
    for prefix, entry in sorted(groups, key=lambda group: bool(group[0])):
        for name, shape in zip(entry.hf, entry_shapes(entry, spec)):
            kind = init_kind(entry, name)
            if kind == "norm":
                value = torch.ones(shape, dtype=dtype)
            elif kind == "bias":
                value = torch.zeros(shape, dtype=dtype)
            else:
                s = out_std if kind == "out_proj" else std
                value = (torch.randn(*shape, generator=g) * s).to(dtype)
            w[prefix + name] = value
    return w
