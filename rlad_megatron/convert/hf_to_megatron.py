"""Import: a Hugging Face Llama / Qwen2 / Qwen3 directory -> a Megatron torch_dist checkpoint.

    import_hf(hf_dir, root, tp=1, pp=1, dtype=None)   # single process, or every rank of torchrun

Each rank builds only its own TP/PP shard of the GPTModel (models/build.py) and fills every
parameter from the windows of HF tensors it needs (convert/keymaps.py: its rows of q/k/v, gate/up
and the vocabulary, its columns of o_proj/down_proj, whole norms), read one at a time from the
memory-mapped safetensors files. Then models/checkpoint.save writes ROOT/iter_0000000 and the
pointer file; the dist checkpoint reshards at load, so the import layout only decides how the
work is spread (a single process writes TP=1/PP=1).

Memory per rank: its model shard (built in fp32 on CPU, cast to `dtype` before saving; megatron's
CPU initialisation also builds one full-size master weight at a time while constructing) plus
the windows of one fused tensor (q+k+v, or gate+up) being merged; never the whole model.

Recorded in ROOT/iter_0000000/rlad_model.json: the spec, "tokenizer" (the HF directory's
absolute path), "tokenizer_dir" ("tokenizer": the copied tokenizer files, relative to the
iteration folder), "source", "dtype", "import_layout", and the source's "hf_config" and
"generation_config".
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional

import torch.distributed as dist

from rlad_megatron.convert.hf_config import HF_CLASSES, source_dtype
from rlad_megatron.convert.hf_reader import HFCheckpoint
from rlad_megatron.convert.layout import load_shards
from rlad_megatron.models import checkpoint
from rlad_megatron.models.config import DTYPES
from rlad_megatron.models.layout_check import CLI_NAMES, model_layout_problems

TOKENIZER_DIR = "tokenizer"


def check_parallel(spec, tp: int, pp: int, source: str) -> None:
    """ValueError naming the config file when TP/PP cannot split the model."""
    problems = model_layout_problems(spec, tp=tp, pp=pp, role="", names=CLI_NAMES)
    if problems:
        raise ValueError(f"{source}: {problems[0]}")


def fill_chunks(chunks, hf: HFCheckpoint, *, tp: int, tp_rank: int, padded_vocab: int) -> None:
    """Copy this rank's shard of every parameter of `chunks` from the HF checkpoint."""
    load_shards(chunks, hf.read, spec=hf.spec, tp=tp, tp_rank=tp_rank, padded_vocab=padded_vocab,
                source=str(hf.dir))


def _init(tp: int, pp: int):
    from rlad_megatron.runtime import ParallelConfig, init_distributed, init_parallel

    env = init_distributed()
    if env.world_size == 1 and tp * pp > 1:
        # torch_dist checkpoints load at any layout: one process writes the same checkpoint
        # (Megatron-LM's converter also writes any target from one process); torchrun is the
        # faster path that streams each rank's shards
        print(f"rlad convert import: one process writes the checkpoint whole; it loads at --tp "
              f"{tp} --pp {pp} (or any layout the model allows). torchrun --nproc-per-node "
              f"{tp * pp} streams it rank by rank instead")
        tp = pp = 1
    if env.world_size % (tp * pp):
        raise ValueError(f"--tp {tp} --pp {pp} needs a multiple of {tp * pp} processes, this run "
                         f"has {env.world_size}: launch with torchrun --nproc-per-node {tp * pp} "
                         "or from one process")
    return init_parallel(ParallelConfig(tensor=tp, pipeline=pp))


def _check_target(root: Path) -> None:
    """The import writes iteration 0 and points the root at it: a folder that already holds a
    checkpoint (a training run's, say) would have its pointer moved back to 0. Refused."""
    if root.exists() and not root.is_dir():
        raise ValueError(f"--megatron-path {root} is a file; give a new or empty folder")
    held = checkpoint.saved_iterations(root)
    if held or (root / checkpoint.POINTER).exists():
        raise ValueError(f"--megatron-path {root} already holds a checkpoint (iterations "
                         f"{held or 'named by ' + checkpoint.POINTER}); importing would move its "
                         f"pointer to iteration 0. Give a new or empty folder")


def import_hf(hf_dir: str | Path, megatron_path: str | Path, *, tp: int = 1, pp: int = 1,
              dtype: Optional[str] = None, par=None) -> Path:
    """Collective over the ranks of `par` (or of a fresh tp x pp layout): write the checkpoint;
    returns the iteration folder. dtype defaults to the source's (config.json), else fp32."""
    from rlad_megatron.models.build import build_chunks
    from rlad_megatron.runtime.cpu_shims import needed as cpu_only

    hf = HFCheckpoint(hf_dir)
    if par is not None:
        tp, pp = par.tp, par.pp
    check_parallel(hf.spec, tp, pp, str(hf.config_path))
    dtype = dtype or source_dtype(hf.config) or "fp32"
    if dtype not in DTYPES:
        raise ValueError(f"--dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    hf.check()
    _check_target(Path(megatron_path))
    own_layout = par is None
    if own_layout:
        par = _init(tp, pp)
    try:
        build_dtype = "fp32" if cpu_only() else dtype
        chunks, _, padded = build_chunks(hf.spec, par, dtype=build_dtype, role="model")
        fill_chunks(chunks, hf, tp=par.tp, tp_rank=par.tp_rank, padded_vocab=padded)
        if build_dtype != dtype:
            for chunk in chunks:
                chunk.to(DTYPES[dtype])
        meta = {"tokenizer": str(hf.dir), "tokenizer_dir": TOKENIZER_DIR,
                "source": {"format": "huggingface", "path": str(hf.dir),
                           "architecture": HF_CLASSES[hf.spec.arch]},
                "dtype": dtype, "import_layout": {"tp": par.tp, "pp": par.pp},
                "hf_config": hf.config, "generation_config": hf.generation_config()}
        folder = checkpoint.save(megatron_path, 0, checkpoint.model_sharded_state_dict(chunks),
                                 spec=hf.spec, meta=meta)
        if dist.get_rank() == 0:
            # after the atomic save: a crash here leaves a checkpoint whose tokenizer is
            # found through meta["tokenizer"] instead (see docs/conversion.md)
            (folder / TOKENIZER_DIR).mkdir(exist_ok=True)
            for path in hf.tokenizer_files():
                shutil.copy2(path, folder / TOKENIZER_DIR / path.name)
        dist.barrier()
    finally:
        if own_layout:
            from rlad_megatron.runtime import destroy_parallel

            destroy_parallel()
    return folder
