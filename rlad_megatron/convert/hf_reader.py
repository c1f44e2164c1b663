"""A Hugging Face model directory, read lazily: config, tensor index, and windows of tensors.

    hf = HFCheckpoint(dir)        # config.json -> spec; model.safetensors.index.json or
                                  # model.safetensors -> which file holds which tensor
    hf.check()                    # every tensor the spec needs exists with the right shape
    hf.read(name, rows, cols)     # one window of one tensor (safetensors get_slice)

Nothing is loaded up front: safetensors files are memory-mapped by safe_open, shapes come from
their headers, and `read` copies only the requested window. A TP rank therefore reads its own
rows or columns of each tensor and never a full copy of, say, a 128k x 16k embedding.

Errors name the file: a missing config.json, a shard named in the index that is not on disk, a
tensor the spec needs that no file holds, a tensor whose shape differs from what config.json
implies, and tensors the key map does not know (an unsupported architecture feature).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch

from rlad_megatron.convert.hf_config import read_hf_config, spec_from_hf_config
from rlad_megatron.convert.keymaps import IGNORED_HF, OUTPUT, hf_shapes

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json",
                   "chat_template.jinja", "chat_template.json")
"""Files copied with a model (those present); none of them is needed by megatron itself."""


class HFCheckpoint:
    """config.json, the spec it implies, and lazy access to the safetensors tensors."""

    def __init__(self, hf_dir: str | Path):
        self.dir = Path(hf_dir).resolve()
        self.config, self.config_path = read_hf_config(self.dir)
        self.spec = spec_from_hf_config(self.config, source=str(self.config_path))
        self._handles: dict[str, object] = {}
        self.weight_map = self._weight_map()

    def _weight_map(self) -> dict[str, str]:
        index = self.dir / INDEX
        if index.exists():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as e:
                raise ValueError(f"{index}: not a safetensors index (no weight_map: {e})") from e
            for name, file in weight_map.items():
                if not (self.dir / file).exists():
                    raise FileNotFoundError(f"{index} names shard {file} (holding {name}), but "
                                            f"{self.dir / file} does not exist")
            return weight_map
        if (self.dir / SINGLE).exists():
            return {name: SINGLE for name in self._open(SINGLE).keys()}
        others = sorted(p.name for p in self.dir.glob("*.bin")) + sorted(
            p.name for p in self.dir.glob("*.pt"))
        hint = f" (found {', '.join(others)}: only safetensors are read)" if others else ""
        raise FileNotFoundError(f"{self.dir} has neither {INDEX} nor {SINGLE}{hint}")

    def _open(self, file: str):
        if file not in self._handles:
            from safetensors import safe_open

            try:
                self._handles[file] = safe_open(str(self.dir / file), framework="pt")
            except Exception as e:  # safetensors raises its own error types
                raise ValueError(f"{self.dir / file}: cannot open as safetensors ({e})") from e
        return self._handles[file]

    def where(self, name: str) -> Path:
        if name not in self.weight_map:
            source = self.dir / (INDEX if (self.dir / INDEX).exists() else SINGLE)
            raise KeyError(f"{source}: no tensor {name} (the {self.spec.arch} config needs it)")
        return self.dir / self.weight_map[name]

    def shape(self, name: str) -> tuple[int, ...]:
        self.where(name)
        return tuple(self._open(self.weight_map[name]).get_slice(name).get_shape())

    def check(self) -> None:
        """Every tensor the spec needs is present with its shape; no unknown tensors."""
        expected = hf_shapes(self.spec)
        for name, shape in expected.items():
            found = self.shape(name)
            if found != shape:
                raise ValueError(f"{self.where(name)}: tensor {name} has shape {list(found)}, "
                                 f"but {self.config_path} implies {list(shape)}")
        tied_copy = set(OUTPUT.hf) if self.spec.tie_embeddings else set()
        unknown = sorted(n for n in self.weight_map if n not in expected and n not in tied_copy
                         and not n.endswith(IGNORED_HF))
        if unknown:
            more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
            raise ValueError(f"{self.dir}: tensors {', '.join(unknown[:5])}{more} have no place in "
                             f"a {self.spec.arch} model as {self.config_path} describes it")

    def read(self, name: str, rows: Optional[slice] = None,
             cols: Optional[slice] = None) -> torch.Tensor:
        """The window [rows, cols] of tensor `name` in its stored dtype (None = whole axis)."""
        self.where(name)
        view = self._open(self.weight_map[name]).get_slice(name)
        if rows is None and cols is None:
            return view[:]
        if cols is None:
            return view[rows]
        return view[rows or slice(None), cols]

    def tokenizer_files(self) -> list[Path]:
        return [self.dir / f for f in TOKENIZER_FILES if (self.dir / f).is_file()]

    def generation_config(self) -> Optional[dict]:
        path = self.dir / "generation_config.json"
        return json.loads(path.read_text()) if path.exists() else None
