"""ModelSpec: the architecture of one decoder-only LLM (Llama 2/3/3.1, Qwen2/2.5, Qwen3), as data.

A spec is what a Hugging Face config.json says about the network, in megatron's vocabulary. It
holds no parallel layout: models/config.py joins a spec and a `Parallel` into a TransformerConfig.

Architectures (all: RMSNorm, SwiGLU MLP without biases, RoPE, grouped-query attention):
  llama  - Llama 2/3/3.1; optional llama3 RoPE scaling (Llama 3.1+); no qkv bias
  qwen2  - Qwen2/2.5: qkv bias
  qwen3  - Qwen3: qk layernorm (RMSNorm on each head's q and k), explicit head_dim
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

ARCHITECTURES = ("llama", "qwen2", "qwen3")


@dataclass
class RopeScaling:
    """llama3-style RoPE frequency scaling (Llama 3.1 and later). megatron-core's llama3 scaling
    fixes every field but `factor` to these defaults (convert/hf_config.py refuses others)."""

    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclass
class ModelSpec:
    """Architecture of a decoder-only transformer; field names follow megatron's
    TransformerConfig."""

    arch: str
    """One of ARCHITECTURES: llama, qwen2, qwen3."""
    num_layers: int
    hidden_size: int
    ffn_hidden_size: int
    num_attention_heads: int
    num_query_groups: int
    """Key/value heads (grouped-query attention); equal to num_attention_heads for plain MHA."""
    vocab_size: int
    """True tokenizer vocabulary size (unpadded); models/config.py pads it for TP."""
    kv_channels: Optional[int] = None
    """Head dimension; None means hidden_size // num_attention_heads."""
    max_position_embeddings: int = 4096
    rotary_base: float = 10000.0
    rope_scaling: Optional[RopeScaling] = None
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    qkv_bias: bool = False
    qk_layernorm: bool = False
    make_vocab_size_divisible_by: int = 128
    init_method_std: float = 0.02
    name: str = ""
    """Free-form label (preset name or source checkpoint) used in messages."""

    def __post_init__(self):
        if isinstance(self.rope_scaling, dict):
            self.rope_scaling = RopeScaling(**self.rope_scaling)

    @property
    def head_dim(self) -> int:
        return self.kv_channels or self.hidden_size // self.num_attention_heads

    def validate(self, prefix: str = "model") -> None:
        """Internal consistency of the architecture; layout checks live in models/config.py."""
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"{prefix}.arch: {self.arch!r} is not supported; "
                             f"choose one of {', '.join(ARCHITECTURES)}")
        for key in ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads",
                    "num_query_groups", "vocab_size", "max_position_embeddings"):
            value = getattr(self, key)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{prefix}.{key} must be a positive integer, got {value!r}")
        if self.num_attention_heads % self.num_query_groups:
            raise ValueError(
                f"{prefix}.num_query_groups: {self.num_query_groups} does not divide "
                f"{prefix}.num_attention_heads: {self.num_attention_heads}")
        if self.kv_channels is None and self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"{prefix}.num_attention_heads: {self.num_attention_heads} does not divide "
                f"{prefix}.hidden_size: {self.hidden_size} (set {prefix}.kv_channels)")
        if self.qk_layernorm and self.arch != "qwen3":
            raise ValueError(f"{prefix}.qk_layernorm is a qwen3 feature, {prefix}.arch is "
                             f"{self.arch!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict, prefix: str = "model") -> "ModelSpec":
        cls.check_fields(data, prefix)
        return cls(**data)

    @classmethod
    def check_fields(cls, data, prefix: str = "model") -> None:
        """ValueError naming `prefix` when `data` has keys that are not ModelSpec fields."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{prefix}: unknown field(s) {', '.join(unknown)}; "
                             f"known: {', '.join(sorted(known))}")

    def num_parameters(self) -> int:
        """Total parameter count (unpadded vocabulary), for reports and the planner."""
        h, f, v = self.hidden_size, self.ffn_hidden_size, self.vocab_size
        q = self.num_attention_heads * self.head_dim
        kv = self.num_query_groups * self.head_dim
        attn = h * (q + 2 * kv) + q * h + (q + 2 * kv if self.qkv_bias else 0)
        attn += 2 * self.head_dim if self.qk_layernorm else 0
        per_layer = attn + 3 * h * f + 2 * h
        embed = v * h * (1 if self.tie_embeddings else 2)
        return self.num_layers * per_layer + embed + h


def _spec(**kw) -> ModelSpec:
    return ModelSpec(**kw)


PRESETS: dict[str, ModelSpec] = {
    # Tiny random architectures for tests and the CPU demo.
    "tiny-llama": _spec(arch="llama", num_layers=2, hidden_size=64, ffn_hidden_size=128,
                        num_attention_heads=4, num_query_groups=2, vocab_size=256,
                        max_position_embeddings=256, rotary_base=10000.0),
    "tiny-qwen2": _spec(arch="qwen2", num_layers=2, hidden_size=64, ffn_hidden_size=128,
                        num_attention_heads=4, num_query_groups=2, vocab_size=256,
                        max_position_embeddings=256, rotary_base=1e6, qkv_bias=True),
    "tiny-qwen3": _spec(arch="qwen3", num_layers=2, hidden_size=64, ffn_hidden_size=128,
                        num_attention_heads=4, num_query_groups=2, kv_channels=32, vocab_size=256,
                        max_position_embeddings=256, rotary_base=1e6, qk_layernorm=True,
                        tie_embeddings=True, norm_eps=1e-6),
    # Real architectures (published config.json values).
    "smollm2-135m": _spec(arch="llama", num_layers=30, hidden_size=576, ffn_hidden_size=1536,
                          num_attention_heads=9, num_query_groups=3, vocab_size=49152,
                          max_position_embeddings=8192, rotary_base=1e5, tie_embeddings=True),
    "llama2-7b": _spec(arch="llama", num_layers=32, hidden_size=4096, ffn_hidden_size=11008,
                       num_attention_heads=32, num_query_groups=32, vocab_size=32000,
                       max_position_embeddings=4096, rotary_base=1e4),
    "llama3-8b": _spec(arch="llama", num_layers=32, hidden_size=4096, ffn_hidden_size=14336,
                       num_attention_heads=32, num_query_groups=8, vocab_size=128256,
                       max_position_embeddings=8192, rotary_base=5e5),
    "llama3.1-8b": _spec(arch="llama", num_layers=32, hidden_size=4096, ffn_hidden_size=14336,
                         num_attention_heads=32, num_query_groups=8, vocab_size=128256,
                         max_position_embeddings=131072, rotary_base=5e5,
                         rope_scaling=RopeScaling()),
    "llama3.1-70b": _spec(arch="llama", num_layers=80, hidden_size=8192, ffn_hidden_size=28672,
                          num_attention_heads=64, num_query_groups=8, vocab_size=128256,
                          max_position_embeddings=131072, rotary_base=5e5,
                          rope_scaling=RopeScaling()),
    "llama3.1-405b": _spec(arch="llama", num_layers=126, hidden_size=16384, ffn_hidden_size=53248,
                           num_attention_heads=128, num_query_groups=8, vocab_size=128256,
                           max_position_embeddings=131072, rotary_base=5e5,
                           rope_scaling=RopeScaling()),
    "qwen2.5-1.5b": _spec(arch="qwen2", num_layers=28, hidden_size=1536, ffn_hidden_size=8960,
                          num_attention_heads=12, num_query_groups=2, vocab_size=151936,
                          max_position_embeddings=32768, rotary_base=1e6, qkv_bias=True,
                          tie_embeddings=True, norm_eps=1e-6),
    "qwen2.5-7b": _spec(arch="qwen2", num_layers=28, hidden_size=3584, ffn_hidden_size=18944,
                        num_attention_heads=28, num_query_groups=4, vocab_size=152064,
                        max_position_embeddings=32768, rotary_base=1e6, qkv_bias=True,
                        norm_eps=1e-6),
    "qwen3-0.6b": _spec(arch="qwen3", num_layers=28, hidden_size=1024, ffn_hidden_size=3072,
                        num_attention_heads=16, num_query_groups=8, kv_channels=128,
                        vocab_size=151936, max_position_embeddings=40960, rotary_base=1e6,
                        qk_layernorm=True, tie_embeddings=True, norm_eps=1e-6),
    "qwen3-1.7b": _spec(arch="qwen3", num_layers=28, hidden_size=2048, ffn_hidden_size=6144,
                        num_attention_heads=16, num_query_groups=8, kv_channels=128,
                        vocab_size=151936, max_position_embeddings=40960, rotary_base=1e6,
                        qk_layernorm=True, tie_embeddings=True, norm_eps=1e-6),
    "qwen3-8b": _spec(arch="qwen3", num_layers=36, hidden_size=4096, ffn_hidden_size=12288,
                      num_attention_heads=32, num_query_groups=8, kv_channels=128,
                      vocab_size=151936, max_position_embeddings=40960, rotary_base=1e6,
                      qk_layernorm=True, norm_eps=1e-6),
    "qwen3-32b": _spec(arch="qwen3", num_layers=64, hidden_size=5120, ffn_hidden_size=25600,
                       num_attention_heads=64, num_query_groups=8, kv_channels=128,
                       vocab_size=151936, max_position_embeddings=40960, rotary_base=1e6,
                       qk_layernorm=True, norm_eps=1e-6),
}
for _name, _preset in PRESETS.items():
    _preset.name = _name


def get_preset(preset: str, **overrides) -> ModelSpec:
    """A copy of a named preset, with field overrides (e.g. num_layers=4 for a truncated model)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; known: {', '.join(sorted(PRESETS))}")
    ModelSpec.check_fields(overrides, f"preset {preset!r}")
    return dataclasses.replace(PRESETS[preset], **overrides)
