"""Deterministic random weights in Hugging Face layout, for demos and smoke runs.

Megatron's default initialisation depends on the layout it is built in only through its RNG; these
full (TP=1) tensors are generated once from a seed and then sharded with convert/layout.py, so the
same seed gives the same model at any TP/PP.
"""

from __future__ import annotations

import torch


def random_hf_weights(spec, seed: int = 0, dtype=torch.float32) -> dict[str, torch.Tensor]:
    """N(0, init_method_std) matrices (output projections scaled by 1/sqrt(2*layers), as megatron
    does), unit norms, zero biases; Hugging Face names."""
    g = torch.Generator().manual_seed(seed)
    std = spec.init_method_std
    out_std = std / (2.0 * spec.num_layers) ** 0.5

    def normal(*shape, s=std):
        return (torch.randn(*shape, generator=g) * s).to(dtype)

    h, f, d = spec.hidden_size, spec.ffn_hidden_size, spec.head_dim
    nq, ng = spec.num_attention_heads, spec.num_query_groups
    w = {"model.embed_tokens.weight": normal(spec.vocab_size, h),
         "model.norm.weight": torch.ones(h, dtype=dtype)}
    if not spec.tie_embeddings:
        w["lm_head.weight"] = normal(spec.vocab_size, h)
    for layer in range(spec.num_layers):
        p = f"model.layers.{layer}."
        w[p + "input_layernorm.weight"] = torch.ones(h, dtype=dtype)
        w[p + "post_attention_layernorm.weight"] = torch.ones(h, dtype=dtype)
        w[p + "self_attn.q_proj.weight"] = normal(nq * d, h)
        w[p + "self_attn.k_proj.weight"] = normal(ng * d, h)
        w[p + "self_attn.v_proj.weight"] = normal(ng * d, h)
        w[p + "self_attn.o_proj.weight"] = normal(h, nq * d, s=out_std)
        if spec.qkv_bias:
            for x, n in (("q", nq), ("k", ng), ("v", ng)):
                w[p + f"self_attn.{x}_proj.bias"] = torch.zeros(n * d, dtype=dtype)
        if spec.qk_layernorm:
            w[p + "self_attn.q_norm.weight"] = torch.ones(d, dtype=dtype)
            w[p + "self_attn.k_norm.weight"] = torch.ones(d, dtype=dtype)
        w[p + "mlp.gate_proj.weight"] = normal(f, h)
        w[p + "mlp.up_proj.weight"] = normal(f, h)
        w[p + "mlp.down_proj.weight"] = normal(h, f, s=out_std)
    return w
