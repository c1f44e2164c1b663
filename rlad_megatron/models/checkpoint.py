"""Megatron-layout distributed checkpoints of a model, written atomically.

Layout (Megatron-LM's, so Megatron tools and users find their way):

    ROOT/latest_checkpointed_iteration.txt   the newest complete iteration, e.g. "100"
    ROOT/iter_0000100/                       torch_dist: .metadata, __R_I.distcp, common.pt,
                                             metadata.json, plus rlad_model.json (the ModelSpec,
                                             tokenizer source, dtype) and whatever `files` adds

The model's tensors sit under "model" (one chunk) or "model0", "model1", ... (virtual pipeline
chunks), as in Megatron-LM; their sharded keys are global, so a checkpoint loads at any TP, PP or
VPP. Other state (optimizer, scheduler, RNG, data position) is added by bookkeeping/checkpoint.py.

Atomicity: every rank writes into ROOT/.tmp_iter_XXXXXXX; after a barrier rank 0 renames it to
iter_XXXXXXX and only then replaces the pointer (write + os.replace). A crash at any moment
leaves the previous pointer naming a complete checkpoint; leftover .tmp folders are ignored and
cleaned at the next save. Old iterations beyond keep_last are removed after the pointer moves.

Verification: before the rename rank 0 writes rlad_manifest.json, every file of the iteration,
its size and its sha256 (models/checkpoint_files.py). `verify(folder)` names the first missing,
truncated, grown or corrupted file, so a checkpoint that
a full disk, a killed copy or a bad sync left incomplete is found before anything loads it
(bookkeeping/checkpoint.py then falls back to the newest iteration that verifies). Iterations
written before manifests existed verify as far as their files are present.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist

from rlad_megatron.models import checkpoint_files
from rlad_megatron.models.checkpoint_files import MANIFEST, write_manifest  # noqa: F401
from rlad_megatron.models.spec import ModelSpec
from rlad_megatron.runtime.cpu_shims import cuda_to_cpu
from rlad_megatron.runtime.parallel import Parallel
from rlad_megatron.runtime.teacher_parallel import replica_ids_of

POINTER = "latest_checkpointed_iteration.txt"
MODEL_META = "rlad_model.json"
_ITER_RE = re.compile(r"^iter_(\d{7})$")


def iter_dir(root: str | Path, iteration: int) -> Path:
    return Path(root) / f"iter_{iteration:07d}"


def saved_iterations(root: str | Path) -> list[int]:
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(int(m.group(1)) for p in root.iterdir() if (m := _ITER_RE.match(p.name)))


def latest_iteration(root: str | Path) -> Optional[int]:
    """The iteration named by the pointer file, or None when ROOT has no checkpoint."""
    pointer = Path(root) / POINTER
    if not pointer.exists():
        return None
    text = pointer.read_text().strip()
    if not text.isdigit():
        raise ValueError(f"{pointer}: expected an iteration number, found {text!r}")
    iteration = int(text)
    if not iter_dir(root, iteration).is_dir():
        raise ValueError(f"{pointer} names iteration {iteration} but {iter_dir(root, iteration)} "
                         "does not exist")
    return iteration


def resolve(path: str | Path, iteration: Optional[int] = None) -> Path:
    """A checkpoint root (with its pointer) or an iter_XXXXXXX folder -> the iteration folder."""
    path = Path(path)
    if _ITER_RE.match(path.name) and path.is_dir():
        return path
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if iteration is None:
        iteration = latest_iteration(path)
        if iteration is None:
            raise FileNotFoundError(f"{path} holds no {POINTER} (not a Megatron checkpoint root)")
    folder = iter_dir(path, iteration)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} does not exist")
    return folder


def model_state_key(index: int, num_chunks: int) -> str:
    return "model" if num_chunks == 1 else f"model{index}"


def model_sharded_state_dict(chunks, par: Optional[Parallel] = None) -> dict:
    """{"model": ...} or {"model0": ..., "model1": ...} of megatron sharded tensors. par: the
    model's layout when its groups are not megatron's globals (a teacher on its own layout,
    par.detached): its data-parallel group and rank set the replica ids, which megatron otherwise
    reads from the globals."""
    modules = [getattr(c, "module", c) for c in chunks]
    if par is None or not par.detached:
        return {model_state_key(i, len(modules)): m.sharded_state_dict()
                for i, m in enumerate(modules)}
    with replica_ids_of(par):
        return {model_state_key(i, len(modules)):
                m.sharded_state_dict(metadata={"dp_cp_group": par.dp_group})
                for i, m in enumerate(modules)}


def write_model_meta(folder: Path, spec: ModelSpec, **extra) -> None:
    (folder / MODEL_META).write_text(json.dumps({"spec": spec.to_dict(), **extra}, indent=2))


def read_model_meta(path: str | Path) -> dict:
    """The rlad_model.json of a checkpoint (root or iteration folder)."""
    folder = resolve(path)
    meta = folder / MODEL_META
    if not meta.exists():
        raise FileNotFoundError(f"{meta} is missing: {folder} was not written by rlad_megatron "
                                "(convert it with `rlad convert import` or pass the model spec)")
    return json.loads(meta.read_text())


def recorded_tokenizer(path: str | Path) -> Optional[Path]:
    """The tokenizer a checkpoint records: its own copy (meta["tokenizer_dir"], relative to the
    iteration folder, as `rlad convert import` writes it) when present, so that the checkpoint is
    self-contained; else meta["tokenizer"] (relative to the folder, or as written); None when it
    records none."""
    folder = resolve(path)
    meta = read_model_meta(folder)
    own = folder / meta.get("tokenizer_dir", "tokenizer") if meta.get(
        "tokenizer_dir", "tokenizer") else None
    if own is not None and own.is_dir() and any(own.iterdir()):
        return own
    recorded = meta.get("tokenizer")
    if not recorded:
        return None
    local = folder / recorded
    return local if local.exists() else Path(recorded)


def read_spec(path: str | Path) -> ModelSpec:
    return ModelSpec.from_dict(read_model_meta(path)["spec"], prefix=f"{path}:{MODEL_META}")


def rank_payload_name(rank: int) -> str:
    return f"rank_state_{rank:05d}.pt"


def save(root: str | Path, iteration: int, sharded_state_dict: dict, *, spec: ModelSpec,
         meta: Optional[dict] = None, files: Optional[dict[str, str]] = None,
         keep_last: Optional[int] = None, rank_payload: Optional[object] = None) -> Path:
    """Collective: write iteration `iteration` atomically; returns the final folder.
    `files` are text files written by rank 0; `rank_payload` is torch.save'd by every rank."""
    from megatron.core import dist_checkpointing

    root = Path(root)
    tmp = root / f".tmp_iter_{iteration:07d}"
    final = iter_dir(root, iteration)
    rank0 = dist.get_rank() == 0
    if rank0:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".tmp_iter_*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir()
    dist.barrier()
    try:
        with cuda_to_cpu():
            dist_checkpointing.save(sharded_state_dict, str(tmp))
        if rank_payload is not None:
            torch.save(rank_payload, tmp / rank_payload_name(dist.get_rank()))
    except BaseException as e:  # torch's CheckpointException derives from BaseException
        full = checkpoint_files.disk_full(tmp, e)
        if full:
            raise OSError(errno.ENOSPC, full) from None
        raise
    dist.barrier()
    # sha256 of the files just written, each rank a share (rank 0 adds its own files' below)
    shares = [None] * dist.get_world_size()
    dist.all_gather_object(shares, checkpoint_files.digests(tmp, dist.get_rank(),
                                                             dist.get_world_size()))
    if rank0:
        try:
            write_model_meta(tmp, spec, **(meta or {}))
            for name, text in (files or {}).items():
                (tmp / name).write_text(text)
            write_manifest(tmp, {k: v for share in shares for k, v in share.items()})
        except OSError as e:
            full = checkpoint_files.disk_full(tmp, e)
            if full:
                raise OSError(errno.ENOSPC, full) from None
            raise
        if final.exists():  # re-saving an iteration (e.g. after a resume): replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
        pointer_tmp = root / (POINTER + ".tmp")
        pointer_tmp.write_text(f"{iteration}\n")
        os.replace(pointer_tmp, root / POINTER)
        if keep_last:
            for old in saved_iterations(root)[:-keep_last]:
                if old != iteration:
                    shutil.rmtree(iter_dir(root, old), ignore_errors=True)
    dist.barrier()
    return final


def load(path: str | Path, sharded_state_dict: dict, *, iteration: Optional[int] = None,
         strict: str = "assume_ok_unexpected") -> dict:
    """Collective: fill a template sharded state dict (this rank's layout) from a checkpoint."""
    from megatron.core import dist_checkpointing

    folder = resolve(path, iteration)
    return dist_checkpointing.load(sharded_state_dict, str(folder), strict=strict)


def load_model(path: str | Path, chunks, *, iteration: Optional[int] = None,
               par: Optional[Parallel] = None) -> Path:
    """Load model weights (any TP/PP/VPP of the writer) into `chunks`; returns the folder.
    par: see model_sharded_state_dict."""
    folder = resolve(path, iteration)
    state = load(folder, model_sharded_state_dict(chunks, par))
    modules = [getattr(c, "module", c) for c in chunks]
    for i, module in enumerate(modules):
        module.load_state_dict(state[model_state_key(i, len(modules))], strict=True)
    return folder


def verify(folder: str | Path, checksums: bool = True) -> Optional[str]:
    """None when the iteration folder is complete and intact, else what is wrong with it, naming
    the file (models/checkpoint_files.py; without a manifest, the files torch_dist always has)."""
    return checkpoint_files.verify(folder, (".metadata", MODEL_META), checksums=checksums)
