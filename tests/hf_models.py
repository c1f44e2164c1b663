"""Tiny random Hugging Face models (made with transformers, saved with save_pretrained) and the
HF-side references that the conversion tests compare megatron against. Shared by
tests/unit/convert and tests/dist/convert (tests/ is on pytest's pythonpath)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

# HF and megatron compute the same fp32 network with different kernels and reduction orders.
LOGPROB_ATOL = 1e-4
TEXTS = ["The capital of France is Paris.", "12 + 7 = 19", "def f(x):\n    return x * 2"]

LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}

CASES = {
    # GQA 4q/2kv, untied, llama3 RoPE scaling with a theta that puts frequencies in all 3 bands
    "llama": dict(arch="llama", vocab=250, tied=False, rope_scaling=LLAMA3_ROPE, theta=500000.0),
    # qkv bias, padded vocabulary (250 -> 256 at TP=2), several safetensors shards
    "qwen2": dict(arch="qwen2", vocab=250, tied=False, shard="40KB"),
    # qk layernorm, explicit head_dim (32 != 64/4), tied embeddings
    "qwen3": dict(arch="qwen3", vocab=256, tied=True, head_dim=32),
}


def tiny_config(arch, vocab, tied, rope_scaling=None, theta=10000.0, head_dim=None, layers=2):
    from transformers import LlamaConfig, Qwen2Config, Qwen3Config

    cls = {"llama": LlamaConfig, "qwen2": Qwen2Config, "qwen3": Qwen3Config}[arch]
    kw = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16384,
              rope_theta=theta, rope_scaling=rope_scaling, tie_word_embeddings=tied,
              rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2)
    if head_dim:
        kw["head_dim"] = head_dim
    return cls(**kw)


def make_hf_model(out_dir: Path, arch: str, vocab: int, tied: bool, *, rope_scaling=None,
                  theta: float = 10000.0, head_dim=None, shard: str = "5GB", seed: int = 0,
                  dtype=torch.float32, layers: int = 2) -> Path:
    """A random HF model with informative (not near-uniform) logits, saved as safetensors."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = tiny_config(arch, vocab, tied, rope_scaling, theta, head_dim, layers)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.1 * torch.randn_like(p))
            else:
                p.normal_(0, 0.5 if "embed" in name or "lm_head" in name else 0.1)
    model.to(dtype).save_pretrained(str(out_dir), max_shard_size=shard)
    make_char_tokenizer(out_dir)
    return Path(out_dir)


def make_case(out_dir: Path, case: str, **overrides) -> Path:
    return make_hf_model(out_dir, **{**CASES[case], **overrides})


def make_char_tokenizer(out_dir: Path) -> None:
    """A character-level HF fast tokenizer (ids < 100) saved next to the model."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for c in map(chr, range(32, 127)):
        vocab[c] = len(vocab)
    vocab["\n"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")
    fast.save_pretrained(str(out_dir))


def load_hf(hf_dir: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()


@torch.no_grad()
def hf_logits_and_logprobs(model, tokens: torch.Tensor):
    """[b, s, V] fp32 logits and [b, s] log p(tokens[t] | tokens[:t]) (position 0: 0), the
    alignment of models.forward.forward_logprobs."""
    logits = model(input_ids=tokens).logits.float()
    lp = torch.zeros(tokens.shape, dtype=torch.float32)
    lp[:, 1:] = logits[:, :-1].log_softmax(-1).gather(-1, tokens[:, 1:, None])[..., 0]
    return logits, lp


def random_tokens(vocab: int, b: int = 2, s: int = 12, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (b, s), generator=g)


def hf_state(hf_dir: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the safetensors files of an HF directory."""
    out = {}
    for path in sorted(Path(hf_dir).glob("*.safetensors")):
        out.update(load_file(str(path)))
    return out


def assert_same_tensors(exported: Path, source: Path) -> None:
    """Bit-for-bit equality of every tensor, same names (a tied lm_head copy excepted)."""
    got, want = hf_state(exported), hf_state(source)
    want.pop("lm_head.weight", None) if "lm_head.weight" not in got else None
    assert sorted(got) == sorted(want), sorted(set(got) ^ set(want))
    bad = [n for n in want if got[n].dtype != want[n].dtype or not torch.equal(got[n], want[n])]
    assert not bad, f"{len(bad)} tensors differ, e.g. {bad[:5]}"


CONFIG_FIELDS = ("architectures", "model_type", "vocab_size", "hidden_size", "intermediate_size",
                 "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
                 "rope_theta", "rope_scaling", "rms_norm_eps", "tie_word_embeddings",
                 "max_position_embeddings", "attention_bias", "bos_token_id", "eos_token_id",
                 "hidden_act", "initializer_range")


