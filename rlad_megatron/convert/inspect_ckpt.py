"""`rlad convert inspect DIR`: what a checkpoint holds, read from metadata only (no tensor data).

A Megatron checkpoint (root with latest_checkpointed_iteration.txt, or an iter_XXXXXXX folder):
the spec and the other entries of rlad_model.json, then every tensor of the torch_dist metadata
with its global shape and dtype. A Hugging Face directory (config.json): the spec it maps to and
its safetensors tensors with their shapes.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from rlad_megatron.convert.dist_reader import TorchDistReader
from rlad_megatron.models import checkpoint


def _table(rows: list[tuple[str, tuple, str]]) -> list[str]:
    width = max((len(k) for k, _, _ in rows), default=0)
    return [f"  {k:<{width}}  {str(list(s)):<22} {d}" for k, s, d in rows]


def _spec_lines(spec) -> list[str]:
    return [f"  {k}: {v}" for k, v in spec.to_dict().items()]


def inspect_megatron(path: str | Path) -> str:
    folder = checkpoint.resolve(path)
    lines = [f"Megatron checkpoint {folder}"]
    try:
        meta = checkpoint.read_model_meta(folder)
    except FileNotFoundError as e:
        meta = None
        lines.append(f"(no spec: {e})")
    if meta is not None:
        lines.append("spec:")
        lines += _spec_lines(checkpoint.read_spec(folder))
        for key in ("dtype", "tokenizer", "tokenizer_dir", "source", "import_layout", "layout",
                    "kind"):
            if key in meta:
                lines.append(f"{key}: {json.dumps(meta[key])}")
    reader = TorchDistReader(folder)
    tensors = reader.tensors()
    rows = [(k, tuple(s), str(d).replace("torch.", "")) for k, (s, d) in sorted(tensors.items())]
    total = sum(int(torch.Size(s).numel()) for s, _ in tensors.values())
    others = len(reader.metadata.state_dict_metadata) - len(tensors)
    lines.append(f"tensors ({len(rows)}, {total:,} elements incl. vocabulary padding; "
                 f"{others} non-tensor objects):")
    return "\n".join(lines + _table(rows))


def inspect_hf(path: str | Path) -> str:
    from rlad_megatron.convert.hf_reader import HFCheckpoint

    hf = HFCheckpoint(path)
    lines = [f"Hugging Face model {hf.dir}", "spec:"] + _spec_lines(hf.spec)
    rows = [(n, hf.shape(n), hf.weight_map[n]) for n in sorted(hf.weight_map)]
    lines.append(f"tensors ({len(rows)}):")
    return "\n".join(lines + _table(rows))


def inspect_checkpoint(path: str | Path) -> str:
    """A readable description of a Megatron checkpoint or a Hugging Face directory."""
    if (Path(path) / "config.json").exists():
        return inspect_hf(path)
    return inspect_megatron(path)
