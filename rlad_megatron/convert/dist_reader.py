"""Read slices of a torch_dist (megatron dist_checkpointing) folder in one process.

    reader = TorchDistReader(iter_folder)
    reader.tensors()                         # {key: (global shape, dtype)} from .metadata
    reader.read("decoder.layers.mlp.linear_fc1.weight", start=(3, 0, 0), size=(1, 2F, h))

Megatron saves every tensor under a global key and global shape, whatever TP/PP wrote it (layer
weights stacked on a leading layer axis, the SwiGLU fc1 as [gate; up] rows, the vocabulary padded
to the writer's size). `read` asks torch.distributed.checkpoint for exactly the requested box and
nothing else: only the stored chunks that overlap it are opened, so memory is the size of the box.
It runs with no_dist=True, so any rank (or a plain process) can read independently of the others,
unlike megatron's collective dist_checkpointing.load.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint import load as dcp_load
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, TensorStorageMetadata
from torch.distributed.checkpoint.planner import LoadPlan
from torch.distributed.checkpoint.planner_helpers import create_read_items_for_chunk_list


class _BoxPlanner(DefaultLoadPlanner):
    """Loads state_dict[key] (a plain tensor) from the global box starting at starts[key]."""

    def __init__(self, starts: dict[str, Sequence[int]]):
        super().__init__(flatten_state_dict=False, flatten_sharded_tensors=False)
        self.starts = starts

    def create_local_plan(self) -> LoadPlan:
        items = []
        for key, dest in self.state_dict.items():
            chunk = ChunkStorageMetadata(offsets=torch.Size(self.starts[key]), sizes=dest.shape)
            items += create_read_items_for_chunk_list(
                key, self.metadata.state_dict_metadata[key], [chunk])
        return LoadPlan(items)

    def lookup_tensor(self, index) -> torch.Tensor:
        return self.state_dict[index.fqn]


class TorchDistReader:
    """Global tensor metadata and box reads of one torch_dist checkpoint folder."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        if not (self.folder / ".metadata").exists():
            raise FileNotFoundError(f"{self.folder}/.metadata is missing: not a torch_dist "
                                    "checkpoint folder")
        self.metadata = FileSystemReader(str(self.folder)).read_metadata()

    def tensors(self) -> dict[str, tuple[torch.Size, torch.dtype]]:
        """Every tensor key with its global shape and stored dtype (byte objects left out)."""
        return {k: (m.size, m.properties.dtype)
                for k, m in self.metadata.state_dict_metadata.items()
                if isinstance(m, TensorStorageMetadata)}

    def shape(self, key: str) -> torch.Size:
        return self._meta(key).size

    def dtype(self, key: str) -> torch.dtype:
        return self._meta(key).properties.dtype

    def _meta(self, key: str) -> TensorStorageMetadata:
        meta = self.metadata.state_dict_metadata.get(key)
        if not isinstance(meta, TensorStorageMetadata):
            raise KeyError(f"{self.folder}: the checkpoint holds no tensor {key!r}")
        return meta

    def read(self, key: str, start: Optional[Sequence[int]] = None,
             size: Optional[Sequence[int]] = None) -> torch.Tensor:
        """The box [start, start + size) of global tensor `key`, in its stored dtype (the whole
        tensor by default)."""
        meta = self._meta(key)
        start = tuple(start or (0,) * len(meta.size))
        size = tuple(size or (n - s for n, s in zip(meta.size, start)))
        if len(start) != len(meta.size) or any(
                s < 0 or n < 0 or s + n > g for s, n, g in zip(start, size, meta.size)):
            raise ValueError(f"{self.folder}: box start={start} size={size} is outside "
                             f"{key} of shape {tuple(meta.size)}")
        out = torch.empty(size, dtype=meta.properties.dtype)
        with warnings.catch_warnings():  # "assuming the intent is to load in a single process"
            warnings.simplefilter("ignore", UserWarning)
            dcp_load({key: out}, storage_reader=FileSystemReader(str(self.folder)),
                     planner=_BoxPlanner({key: start}), no_dist=True)
        return out
