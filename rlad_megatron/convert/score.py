"""`rlad logprobs`: the per-token log-probs of a text under a Megatron checkpoint, to check a
converted teacher against its source model.

    rows = checkpoint_logprobs(root, "Some text", tokenizer=None, tp=1, pp=1)
    # [{"token_id": 504, "token": "Some", "logprob": None}, {"token_id": ..., "logprob": -3.2}, ...]

Token t's log-prob is log p(token_t | tokens_<t) (models/forward.py alignment); the first token
has no prediction, so its logprob is None (null in JSON). A bos token is prepended when the
tokenizer's own encoding does (--add-bos / --no-add-bos choose). The tokenizer defaults to the
copy in the checkpoint (iter folder / meta["tokenizer_dir"]), else meta["tokenizer"]. Single
process, or every rank of torchrun at TP x PP (x DP); the rows are returned on the first
pipeline stage (rank 0 prints them), None elsewhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist

from rlad_megatron.data.tokenizer import load_tokenizer
from rlad_megatron.models import checkpoint


def checkpoint_tokenizer(folder: Path) -> Path:
    path = checkpoint.recorded_tokenizer(folder)
    if path is None:
        raise ValueError(f"{folder / checkpoint.MODEL_META} records no tokenizer: pass "
                         "--tokenizer")
    return path


def checkpoint_logprobs(megatron_path: str | Path, text: str, *,
                        tokenizer: Optional[str | Path] = None, tp: int = 1, pp: int = 1,
                        add_bos: Optional[bool] = None, dtype: str = "fp32",
                        par=None, on_bos=None) -> Optional[list[dict]]:
    """Rows of {"token_id", "token", "logprob"} on the first pipeline stage, None elsewhere.
    add_bos None: the tokenizer's own default (Tokenizer.adds_bos), as the model's own pipeline
    encodes; on_bos(message) is told which was used (bos_choice)."""
    from rlad_megatron.models.build import build_teacher
    from rlad_megatron.models.forward import forward_logprobs
    from rlad_megatron.runtime import (ParallelConfig, destroy_parallel, init_distributed,
                                       init_parallel)

    folder = checkpoint.resolve(megatron_path)
    tok = load_tokenizer(tokenizer or checkpoint_tokenizer(folder))
    ids = tok.encode(text, add_bos=tok.adds_bos if add_bos is None else add_bos)
    if on_bos is not None:
        on_bos(bos_choice(tok, add_bos))
    if not ids:
        raise ValueError(f"--text {text!r} encodes to no tokens with {tok.name}")
    spec = checkpoint.read_spec(folder)
    if max(ids) >= spec.vocab_size:
        raise ValueError(f"tokenizer {tok.name} produced id {max(ids)}, outside the model's "
                         f"vocabulary of {spec.vocab_size} ({folder})")
    if len(ids) > spec.max_position_embeddings:
        raise ValueError(f"--text: {len(ids)} tokens exceed the model's max_position_embeddings "
                         f"{spec.max_position_embeddings} ({folder}); shorten the text")
    own_layout = par is None
    if own_layout:
        init_distributed()
        par = init_parallel(ParallelConfig(tensor=tp, pipeline=pp))
    try:
        teacher = build_teacher(spec, par, dtype=dtype)
        checkpoint.load_model(folder, teacher.chunks)
        lp = forward_logprobs(teacher, torch.tensor([ids]), micro_batch_size=1)
        values = [lp[0].tolist() if lp is not None else None]
        if par.pp > 1:  # last stage -> first stage of this pipeline
            dist.broadcast_object_list(values, src=par.last_stage_global_rank, group=par.pp_group)
    finally:
        if own_layout:
            destroy_parallel()
    if not par.is_first_stage:
        return None
    return [{"token_id": i, "token": tok.decode([i], skip_special_tokens=False),
             "logprob": None if t == 0 else v} for t, (i, v) in enumerate(zip(ids, values[0]))]


def bos_choice(tokenizer, add_bos: Optional[bool]) -> str:
    """Which BOS choice `checkpoint_logprobs` makes, in words."""
    used = tokenizer.adds_bos if add_bos is None else add_bos
    why = "the tokenizer's default" if add_bos is None else ("--add-bos" if add_bos
                                                             else "--no-add-bos")
    return f"bos token {'prepended' if used else 'not prepended'} ({why})"


def format_rows(rows: list[dict]) -> str:
    """A readable table and the total log-prob of the predicted tokens."""
    lines = [f"{'pos':>4} {'token_id':>8} {'logprob':>10}  token"]
    for t, r in enumerate(rows):
        lp = "" if r["logprob"] is None else f"{r['logprob']:.4f}"
        lines.append(f"{t:>4} {r['token_id']:>8} {lp:>10}  {r['token']!r}")
    total = sum(r["logprob"] for r in rows if r["logprob"] is not None)
    lines.append(f"sum of log-probs over {len(rows) - 1} predicted tokens: {total:.4f}")
    return "\n".join(lines)
