"""Hugging Face config.json <-> ModelSpec, both ways, with errors that name the file and the key.

    HF config.json                    ModelSpec
    model_type / architectures[0]     arch: llama (LlamaForCausalLM), qwen2 (Qwen2ForCausalLM),
                                            qwen3 (Qwen3ForCausalLM)
    num_hidden_layers                 num_layers
    hidden_size                       hidden_size
    intermediate_size                 ffn_hidden_size
    num_attention_heads               num_attention_heads
    num_key_value_heads               num_query_groups (default: num_attention_heads)
    head_dim                          kv_channels (qwen3 always; others when != hidden/heads)
    vocab_size                        vocab_size (unpadded)
    max_position_embeddings           max_position_embeddings
    rope_theta                        rotary_base
    rope_scaling {rope_type: llama3}  rope_scaling (RopeScaling)
    rms_norm_eps                      norm_eps
    tie_word_embeddings               tie_embeddings (default false, as in the three HF classes)
    (qwen2: always)                   qkv_bias
    (qwen3: always)                   qk_layernorm
    initializer_range                 init_method_std

Refused, because megatron's GPTModel as built by models/build.py would compute something else:
hidden_act other than silu, mlp_bias, attention_bias (llama, qwen3: it also adds an o_proj bias),
sliding-window attention, partial rotary embeddings, RoPE scaling other than llama3 (and llama3
with factors megatron does not implement), and a non-integer rope_theta.

Export writes the exact HF field names, starting from the source config.json when the
checkpoint recorded one (so token ids and unmapped fields survive the round trip).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from rlad_megatron.models.spec import ModelSpec, RopeScaling

HF_CLASSES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}
TORCH_DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
LLAMA3_FIXED = {key: getattr(RopeScaling, key) for key in
                ("low_freq_factor", "high_freq_factor", "original_max_position_embeddings")}
"""megatron-core's llama3 RoPE scaling hard-codes these (only `factor` is configurable): the
RopeScaling defaults (models/spec.py)."""


def read_hf_config(hf_dir: str | Path) -> tuple[dict, Path]:
    """The parsed config.json of an HF directory and its path."""
    path = Path(hf_dir) / "config.json"
    if not Path(hf_dir).is_dir():
        raise FileNotFoundError(f"{hf_dir} is not a directory (expected a Hugging Face model "
                                "directory with config.json and *.safetensors)")
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: {hf_dir} is not a Hugging Face model "
                                "directory")
    try:
        return json.loads(path.read_text()), path
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e


def source_dtype(cfg: dict) -> Optional[str]:
    """fp32/bf16/fp16 from config.json's dtype (transformers >= 4.56) or torch_dtype, if known."""
    name = cfg.get("dtype") or cfg.get("torch_dtype")
    return {v: k for k, v in TORCH_DTYPE_NAMES.items()}.get(str(name).replace("torch.", ""))


def _arch(cfg: dict, source: str) -> str:
    model_type = cfg.get("model_type")
    classes = cfg.get("architectures") or []
    supported = ", ".join(f"{a} ({c})" for a, c in HF_CLASSES.items())
    if model_type not in HF_CLASSES:
        raise ValueError(f"{source}: model_type {model_type!r} (architectures {classes}) is not "
                         f"supported; supported: {supported}")
    if classes and classes[0] != HF_CLASSES[model_type]:
        raise ValueError(f"{source}: architectures[0] {classes[0]!r} is not supported for "
                         f"model_type {model_type!r}; expected {HF_CLASSES[model_type]}")
    return model_type


def _refuse(cfg: dict, arch: str, source: str) -> None:
    def bad(key, why):
        raise ValueError(f"{source}: {key}={cfg.get(key)!r} is not supported ({why})")

    if cfg.get("hidden_act", "silu") != "silu":
        bad("hidden_act", "the MLP is SwiGLU with silu")
    if cfg.get("mlp_bias"):
        bad("mlp_bias", "the MLP has no biases")
    if arch != "qwen2" and cfg.get("attention_bias"):
        bad("attention_bias", "it adds biases to q, k, v and o_proj; megatron has no o_proj bias")
    if cfg.get("use_sliding_window") or "sliding_attention" in (cfg.get("layer_types") or []):
        bad("use_sliding_window", "sliding-window attention")
    if cfg.get("partial_rotary_factor", 1.0) != 1.0:
        bad("partial_rotary_factor", "rotary embeddings on part of the head")
    theta = cfg.get("rope_theta", 10000.0)
    if float(theta) != int(theta):
        bad("rope_theta", "megatron's GPTModel takes an integer rotary_base")


def _rope_scaling(cfg: dict, source: str) -> Optional[RopeScaling]:
    rs = cfg.get("rope_scaling")
    if not rs:
        return None
    kind = rs.get("rope_type", rs.get("type"))
    if kind in ("default", None):
        return None
    if kind != "llama3":
        raise ValueError(f"{source}: rope_scaling.rope_type={kind!r} is not supported "
                         "(only llama3 scaling, as in Llama 3.1+)")
    scaling = RopeScaling(factor=float(rs["factor"]), **{
        key: type(default)(rs.get(key, default)) for key, default in LLAMA3_FIXED.items()})
    for key, value in LLAMA3_FIXED.items():
        if getattr(scaling, key) != value:
            raise ValueError(f"{source}: rope_scaling.{key}={getattr(scaling, key)} is not "
                             f"supported (megatron-core's llama3 scaling fixes it to {value})")
    return scaling


def spec_from_hf_config(cfg: dict, source: str = "config.json") -> ModelSpec:
    """The ModelSpec of an HF Llama / Qwen2 / Qwen3 config (a parsed config.json)."""
    arch = _arch(cfg, source)
    _refuse(cfg, arch, source)
    missing = [k for k in ("num_hidden_layers", "hidden_size", "intermediate_size",
                           "num_attention_heads", "vocab_size") if k not in cfg]
    if missing:
        raise ValueError(f"{source}: missing field(s) {', '.join(missing)}")
    heads, hidden = cfg["num_attention_heads"], cfg["hidden_size"]
    head_dim = cfg.get("head_dim")
    explicit = head_dim is not None and (arch == "qwen3" or hidden % heads
                                         or head_dim != hidden // heads)
    spec = ModelSpec(
        arch=arch,
        num_layers=cfg["num_hidden_layers"],
        hidden_size=hidden,
        ffn_hidden_size=cfg["intermediate_size"],
        num_attention_heads=heads,
        num_query_groups=cfg.get("num_key_value_heads") or heads,
        kv_channels=head_dim if explicit else None,
        vocab_size=cfg["vocab_size"],
        max_position_embeddings=cfg.get("max_position_embeddings", 4096),
        rotary_base=float(cfg.get("rope_theta", 10000.0)),
        rope_scaling=_rope_scaling(cfg, source),
        norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        qkv_bias=arch == "qwen2",
        qk_layernorm=arch == "qwen3",
        init_method_std=float(cfg.get("initializer_range", 0.02)),
        name=str(cfg.get("_name_or_path") or Path(source).parent.name),
    )
    try:
        spec.validate(prefix=source)
    except ValueError as e:
        raise ValueError(f"{e} (read from {source})") from e
    return spec


def hf_config_from_spec(spec: ModelSpec, *, dtype: str, base: Optional[dict] = None) -> dict:
    """config.json for `spec` with exact HF field names; `base` (the source config.json) supplies
    the fields a spec does not hold (token ids, use_cache, ...)."""
    if spec.arch not in HF_CLASSES:
        raise ValueError(f"spec.arch {spec.arch!r} has no Hugging Face class; "
                         f"supported: {', '.join(HF_CLASSES)}")
    cfg = dict(base or {})
    for stale in ("_name_or_path", "_commit_hash", "auto_map"):
        cfg.pop(stale, None)
    rope = spec.rope_scaling
    cfg.update(
        architectures=[HF_CLASSES[spec.arch]],
        model_type=spec.arch,
        vocab_size=spec.vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.ffn_hidden_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_query_groups,
        hidden_act="silu",
        max_position_embeddings=spec.max_position_embeddings,
        initializer_range=spec.init_method_std,
        rms_norm_eps=spec.norm_eps,
        rope_theta=float(spec.rotary_base),
        rope_scaling=None if rope is None else {
            "rope_type": "llama3", "factor": rope.factor,
            "low_freq_factor": rope.low_freq_factor, "high_freq_factor": rope.high_freq_factor,
            "original_max_position_embeddings": rope.original_max_position_embeddings},
        tie_word_embeddings=spec.tie_embeddings,
        attention_dropout=cfg.get("attention_dropout", 0.0),
        # transformers >= 4.56 reads "dtype", older releases "torch_dtype": write both
        torch_dtype=TORCH_DTYPE_NAMES[dtype],
        dtype=TORCH_DTYPE_NAMES[dtype],
    )
    if spec.arch in ("llama", "qwen3"):
        cfg.update(head_dim=spec.head_dim, attention_bias=False)
    if spec.arch == "llama":
        cfg.update(mlp_bias=False)
        cfg.setdefault("pretraining_tp", 1)
    if spec.arch in ("qwen2", "qwen3"):
        cfg.update(use_sliding_window=False)
        cfg.setdefault("sliding_window", None)
        cfg.setdefault("max_window_layers", spec.num_layers)
        if "layer_types" in cfg:
            cfg["layer_types"] = ["full_attention"] * spec.num_layers
    cfg.setdefault("use_cache", True)
    return dict(sorted(cfg.items()))


def generation_config(hf_cfg: dict, base: Optional[dict] = None) -> dict:
    """generation_config.json: the source's when recorded, else token ids from config.json."""
    if base:
        return dict(base)
    out = {"_from_model_config": True}
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if hf_cfg.get(key) is not None:
            out[key] = hf_cfg[key]
    return out
