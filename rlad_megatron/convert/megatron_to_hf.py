"""Export: a Megatron checkpoint of a Llama / Qwen2 / Qwen3 model -> a Hugging Face directory.

    export_hf(root_or_iter_folder, out_dir, dtype=None, max_shard_bytes=5 GiB)

Works on any checkpoint written with models/checkpoint.save (by `rlad convert import` or by the
trainer, whose extra top-level state such as "optimizer" is simply not read) at any TP, PP or VPP:
the torch_dist format stores global tensors, so no model is built and no layout is needed.

Streaming: the HF tensor list and its sharding into files are planned from the spec alone; then
each output file is filled tensor by tensor, every one read as a box of one layer of one global
dist tensor (convert/dist_reader.py) and split (q/k/v, gate/up) or trimmed (vocabulary padding).
Memory: one output file (<= max_shard_bytes) plus one layer's slice of one global tensor (e.g.
[2F, h] for fc1). Under torchrun the files are spread over the ranks (rank r writes files
r, r + world, ...); rank 0 writes the index, config.json, generation_config.json and tokenizer.

Output: model-XXXXX-of-YYYYY.safetensors + model.safetensors.index.json (always, even for one
file), config.json (exact HF field names, the source config.json as base when the checkpoint
recorded one), generation_config.json, and the tokenizer files the checkpoint carries.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Optional

import torch

from rlad_megatron.convert.dist_reader import TorchDistReader
from rlad_megatron.convert.hf_config import generation_config, hf_config_from_spec
from rlad_megatron.convert.hf_reader import INDEX, TOKENIZER_FILES
from rlad_megatron.convert.keymaps import dist_shapes, hf_shapes, hf_source, split_global
from rlad_megatron.models import checkpoint
from rlad_megatron.models.config import DTYPES
from rlad_megatron.models.spec import ModelSpec

DEFAULT_SHARD_BYTES = 5 * 1024 ** 3


def check_dist_shapes(reader: TorchDistReader, spec: ModelSpec) -> None:
    """Every key the spec needs is in the checkpoint with its global shape (any vocab padding)."""
    stored = reader.tensors()
    where = reader.folder
    for key, shape in dist_shapes(spec, padded_vocab=spec.vocab_size).items():
        if key not in stored:
            raise ValueError(f"{where}: the checkpoint holds no tensor {key}, which the "
                             f"{spec.arch} spec in {checkpoint.MODEL_META} needs")
        found = tuple(stored[key][0])
        vocab_ok = (key.endswith(("word_embeddings.weight", "output_layer.weight"))
                    and found[1:] == shape[1:] and found[0] >= shape[0])
        if found != shape and not vocab_ok:
            raise ValueError(f"{where}: tensor {key} has global shape {list(found)}, the spec in "
                             f"{checkpoint.MODEL_META} implies {list(shape)}")


def plan_files(shapes: dict[str, tuple[int, ...]], itemsize: int,
               max_shard_bytes: int) -> list[list[str]]:
    """HF tensor names grouped into files of at most max_shard_bytes (a bigger tensor alone)."""
    files, current, size = [], [], 0
    for name, shape in shapes.items():
        nbytes = itemsize * int(torch.Size(shape).numel())
        if current and size + nbytes > max_shard_bytes:
            files.append(current)
            current, size = [], 0
        current.append(name)
        size += nbytes
    if current:
        files.append(current)
    return files


class _HFTensors:
    """HF tensors of a dist checkpoint, one at a time; keeps the last global box (the q/k/v or
    gate/up that share it are usually asked for in a row)."""

    def __init__(self, reader: TorchDistReader, spec: ModelSpec):
        self.reader, self.spec = reader, spec
        self._box: tuple[Optional[tuple], list] = (None, [])

    def get(self, name: str) -> torch.Tensor:
        entry, layer, index = hf_source(self.spec, name)
        box_id = (entry.dist, layer)
        if self._box[0] != box_id:
            self._box = (box_id, split_global(entry, self._read(entry, layer), self.spec))
        return self._box[1][index].clone()

    def _read(self, entry, layer: Optional[int]) -> torch.Tensor:
        if layer is None:
            return self.reader.read(entry.dist)
        key = f"decoder.layers.{entry.dist}"
        shape = self.reader.shape(key)
        return self.reader.read(key, (layer,) + (0,) * (len(shape) - 1), (1, *shape[1:]))[0]


def _rank_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def export_hf(megatron_path: str | Path, hf_path: str | Path, *, dtype: Optional[str] = None,
              max_shard_bytes: int = DEFAULT_SHARD_BYTES, iteration: Optional[int] = None,
              hf_reference: Optional[str | Path] = None) -> Path:
    """Write the HF directory `hf_path` (must not exist or be empty); returns it. dtype defaults
    to the dtype the checkpoint stores. Collective when torch.distributed is initialised.

    hf_reference: an HF directory (e.g. the model a student was initialised from) whose tokenizer
    files, config.json and generation_config.json are used instead of the ones the checkpoint
    recorded; needed for the trainer's checkpoints, which record neither."""
    from safetensors.torch import save_file

    folder = checkpoint.resolve(megatron_path, iteration)
    meta = checkpoint.read_model_meta(folder)
    spec = checkpoint.read_spec(folder)
    reader = TorchDistReader(folder)
    check_dist_shapes(reader, spec)
    stored = reader.dtype("embedding.word_embeddings.weight")
    dtype = dtype or {v: k for k, v in DTYPES.items()}[stored]
    if dtype not in DTYPES:
        raise ValueError(f"--dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    if hf_reference is not None:
        meta = {**meta, **reference_meta(hf_reference)}
    out = Path(hf_path)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--hf-path {out} is a file; give a new or empty folder")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty")
    rank, world = _rank_world()
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    _barrier()

    shapes = hf_shapes(spec)
    torch_dtype = DTYPES[dtype]
    files = plan_files(shapes, torch.empty((), dtype=torch_dtype).element_size(), max_shard_bytes)
    names = [f"model-{i + 1:05d}-of-{len(files):05d}.safetensors" for i in range(len(files))]
    tensors = _HFTensors(reader, spec)
    mode = _file_mode()
    for i in range(rank, len(files), world):
        save_file({n: tensors.get(n).to(torch_dtype).contiguous() for n in files[i]},
                  str(out / names[i]), metadata={"format": "pt"})
        os.chmod(out / names[i], mode)  # safetensors writes 0600; a model is for sharing
    _barrier()
    if rank == 0:
        _write_metadata(out, folder, meta, spec, dtype, shapes, files, names, torch_dtype)
    _barrier()
    return out


def _file_mode() -> int:
    """The mode a new file gets under this process's umask (0644 under the usual 022)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _write_metadata(out: Path, folder: Path, meta: dict, spec: ModelSpec, dtype: str,
                    shapes: dict, files: list[list[str]], names: list[str], torch_dtype) -> None:
    itemsize = torch.empty((), dtype=torch_dtype).element_size()
    total = sum(itemsize * int(torch.Size(s).numel()) for s in shapes.values())
    weight_map = {n: names[i] for i, group in enumerate(files) for n in group}
    (out / INDEX).write_text(json.dumps({"metadata": {"total_size": total},
                                         "weight_map": weight_map}, indent=2) + "\n")
    config = hf_config_from_spec(spec, dtype=dtype, base=meta.get("hf_config"))
    files = tokenizer_files(folder, meta)
    if "eos_token_id" not in config and files:  # no source config: token ids from the tokenizer
        from rlad_megatron.data.tokenizer import load_tokenizer

        tok = load_tokenizer(files[0].parent)
        config.update({k: v for k, v in (("bos_token_id", tok.bos_id),
                                         ("eos_token_id", tok.eos_id)) if v is not None})
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    gen = generation_config(config, meta.get("generation_config"))
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    for path in files:
        shutil.copy2(path, out / path.name)


def reference_meta(hf_dir: str | Path) -> dict:
    """What an HF reference directory supplies to an export, in rlad_model.json's terms."""
    from rlad_megatron.convert.hf_config import read_hf_config

    ref = Path(hf_dir).resolve()
    config, _ = read_hf_config(ref)
    gen = ref / "generation_config.json"
    return {"hf_config": config, "tokenizer": str(ref), "tokenizer_dir": None,
            "generation_config": json.loads(gen.read_text()) if gen.exists() else None}


def tokenizer_files(folder: Path, meta: dict) -> list[Path]:
    """The checkpoint's own tokenizer copy, else the files at meta["tokenizer"] (a directory)."""
    own = meta.get("tokenizer_dir", "tokenizer")
    for candidate in (folder / own if own else None,
                      Path(meta["tokenizer"]) if meta.get("tokenizer") else None):
        if candidate is not None and candidate.is_dir():
            found = [candidate / f for f in TOKENIZER_FILES if (candidate / f).is_file()]
            if found:
                return found
    return []
