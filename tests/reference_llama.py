"""An independent float64 reference of the Llama / Qwen2 / Qwen3 decoder, written from the papers'
equations in plain torch (no megatron), over Hugging Face-named full tensors.

Tests build random full weights here (named by the map of rlad_megatron.convert.keymaps), load
them into megatron chunks at any TP/PP through rlad_megatron.convert.layout, and compare
megatron's fp32 results with this float64 forward.
"""

from __future__ import annotations

import torch

from rlad_megatron.convert.keymaps import entry_shapes, hf_entries, init_kind


def random_hf_weights(spec, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random full (TP=1) weights in float64, Hugging Face names (the map of
    rlad_megatron.convert.keymaps), for `spec`: global tensors first, then layer by layer."""
    g = torch.Generator().manual_seed(seed)
    scale = {"norm": 0.1, "bias": 0.1, "embedding": 0.25, "out_proj": 0.08, "weight": 0.08}
    w = {}
    for prefix, entry in sorted(hf_entries(spec), key=lambda group: bool(group[0])):
        for name, shape in zip(entry.hf, entry_shapes(entry, spec)):
            kind = init_kind(entry, name)
            value = torch.randn(*shape, generator=g, dtype=torch.float64) * scale[kind]
            w[prefix + name] = 1.0 + value if kind == "norm" else value
    return w


def _rms(x, weight, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def _rope(x, theta, positions):
    """Non-interleaved (rotate-half) RoPE on [b, heads, s, d]."""
    d = x.shape[-1]
    inv = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    ang = positions[:, None].double() * inv[None]  # [s, d/2]
    cos, sin = torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return x * cos + torch.cat([-x2, x1], -1) * sin


def logits(spec, w: dict[str, torch.Tensor], tokens: torch.Tensor) -> torch.Tensor:
    """[b, s] token ids -> [b, s, V] float64 logits (causal)."""
    b, s = tokens.shape
    d, nq, ng = spec.head_dim, spec.num_attention_heads, spec.num_query_groups
    pos = torch.arange(s)
    x = w["model.embed_tokens.weight"][tokens]
    causal = torch.ones(s, s, dtype=torch.bool).triu(1)
    for layer in range(spec.num_layers):
        p = f"model.layers.{layer}."
        a = _rms(x, w[p + "input_layernorm.weight"], spec.norm_eps)

        def proj(name, n):
            y = a @ w[p + f"self_attn.{name}_proj.weight"].T
            if spec.qkv_bias:
                y = y + w[p + f"self_attn.{name}_proj.bias"]
            return y.view(b, s, n, d).transpose(1, 2)

        q, k, v = proj("q", nq), proj("k", ng), proj("v", ng)
        if spec.qk_layernorm:
            q = _rms(q, w[p + "self_attn.q_norm.weight"], spec.norm_eps)
            k = _rms(k, w[p + "self_attn.k_norm.weight"], spec.norm_eps)
        q, k = _rope(q, spec.rotary_base, pos), _rope(k, spec.rotary_base, pos)
        k = k.repeat_interleave(nq // ng, dim=1)
        v = v.repeat_interleave(nq // ng, dim=1)
        scores = (q @ k.transpose(-1, -2)) / d ** 0.5
        att = scores.masked_fill(causal, float("-inf")).softmax(-1) @ v
        x = x + att.transpose(1, 2).reshape(b, s, nq * d) @ w[p + "self_attn.o_proj.weight"].T
        m = _rms(x, w[p + "post_attention_layernorm.weight"], spec.norm_eps)
        gate = m @ w[p + "mlp.gate_proj.weight"].T
        up = m @ w[p + "mlp.up_proj.weight"].T
        x = x + (torch.nn.functional.silu(gate) * up) @ w[p + "mlp.down_proj.weight"].T
    x = _rms(x, w["model.norm.weight"], spec.norm_eps)
    head = w["model.embed_tokens.weight"] if spec.tie_embeddings else w["lm_head.weight"]
    return x @ head.T


def token_logprobs_and_entropy(spec, w, tokens, temperature: float = 1.0):
    """Aligned like rlad_megatron: lp[:, t] = log p(tokens[t] | tokens[:t]), lp[:, 0] = 0;
    ent[:, t] = entropy of the distribution that predicts tokens[t] (ent[:, 0] = 0)."""
    logp = torch.log_softmax(logits(spec, w, tokens) / temperature, dim=-1)
    lp = torch.zeros(tokens.shape, dtype=torch.float64)
    lp[:, 1:] = logp[:, :-1].gather(-1, tokens[:, 1:, None])[..., 0]
    ent = torch.zeros(tokens.shape, dtype=torch.float64)
    ent[:, 1:] = -(logp.exp() * logp).sum(-1)[:, :-1]
    return lp, ent
