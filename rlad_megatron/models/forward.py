"""Per-token log-probs of a batch under a megatron model, through megatron's own schedule.

Alignment (the one place the shift happens): the model reads tokens[:, :] and its logits at t
predict tokens[:, t + 1]; the returned tensor is re-aligned so that position t holds
log p(tokens[:, t] | tokens[:, :t]) and position 0 holds 0 (it has no prediction). This is the
convention of data/batch.py: every per-token tensor is indexed like `tokens`.

`forward_logprobs` runs the student (old policy) or the teacher forward-only over micro-batches
with get_forward_backward_func() (no pipelining, 1F1B or interleaved, whichever the layout
needs). The [b, s] fp32 result exists on the last pipeline stage, where the loss uses it; other
stages get None. With `fused=True` (the teacher's path) the last stage never materialises its
[b, s, V/tp] logits: it takes the final hidden states and applies the output layer chunk by chunk
(ops.fused_token_logprobs).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from rlad_megatron import ops
from rlad_megatron.data.batch import fit_columns
from rlad_megatron.data.micro_batches import MicroBatchPlan, resolve_plan
from rlad_megatron.models.build import BuiltModel
from rlad_megatron.runtime import mcore_compat
from rlad_megatron.runtime.cpu_shims import cuda_to_cpu
from rlad_megatron.runtime.devices import compute_device


def causal_mask(seq_len: int, device=None) -> torch.Tensor:
    """[1, 1, s, s] bool, True = masked (megatron's convention). Passed explicitly: megatron's
    default builds it on device='cuda'."""
    return torch.triu(torch.ones(seq_len, seq_len, dtype=torch.bool, device=device), 1)[None, None]


def next_token_labels(tokens: torch.Tensor) -> torch.Tensor:
    """labels[:, t] = tokens[:, t + 1]; the last column (no next token) is 0 and later dropped."""
    labels = torch.zeros_like(tokens)
    labels[:, :-1] = tokens[:, 1:]
    return labels


def align_to_tokens(per_label: torch.Tensor) -> torch.Tensor:
    """[b, s] values indexed by label position -> indexed by token position (see module doc)."""
    out = torch.zeros_like(per_label)
    out[:, 1:] = per_label[:, :-1]
    return out


@dataclass
class MicroBatch:
    """Model inputs of one micro-batch. tokens/position_ids/labels: [mb, s] int64."""

    tokens: torch.Tensor
    position_ids: torch.Tensor
    labels: torch.Tensor
    attention_mask: torch.Tensor  # [1, 1, s, s] bool
    index: int  # position of the micro-batch in the batch

    @classmethod
    def from_tokens(cls, tokens: torch.Tensor, index: int = 0) -> "MicroBatch":
        """Inputs on the compute device (the local GPU, or the CPU)."""
        tokens = tokens.to(compute_device())
        b, s = tokens.shape
        pos = torch.arange(s, device=tokens.device)[None].expand(b, -1)
        return cls(tokens, pos, next_token_labels(tokens), causal_mask(s, tokens.device), index)


def split_micro_batches(tokens: torch.Tensor, micro_batch_size: int) -> list[MicroBatch]:
    b = tokens.shape[0]
    if micro_batch_size < 1 or b % micro_batch_size:
        raise ValueError(f"micro_batch_size: {micro_batch_size} does not divide the batch size {b}")
    return [MicroBatch.from_tokens(tokens[i:i + micro_batch_size], i // micro_batch_size)
            for i in range(0, b, micro_batch_size)]


def planned_micro_batches(tokens: torch.Tensor, plan: MicroBatchPlan) -> list[MicroBatch]:
    """The plan's micro-batches of `tokens` [b, s]: rows plan.rows[i], trimmed to plan.widths[i]."""
    return [MicroBatch.from_tokens(fit_columns(tokens[_on(rows, tokens)], width), i)
            for i, (rows, width) in enumerate(zip(plan.rows, plan.widths))]


def _on(rows, like: torch.Tensor) -> torch.Tensor:
    """A plan's row index on the device of `like` (a plan is made on the host)."""
    return torch.as_tensor(rows, dtype=torch.long, device=like.device)


def scatter_rows(parts: list[torch.Tensor], plan: MicroBatchPlan, shape) -> torch.Tensor:
    """Per-micro-batch [mb_i, width_i] results back into one [b, s] tensor in row order (0 past a
    micro-batch's width)."""
    b, s = shape
    out = torch.zeros(b, s, dtype=parts[0].dtype, device=parts[0].device)
    for rows, part in zip(plan.rows, parts):
        width = min(part.shape[1], s)
        out[_on(rows, out), :width] = part[:, :width]
    return out


@contextlib.contextmanager
def _shapes_for(model: BuiltModel, micro_batches: list[MicroBatch]):
    """Micro-batches of different shapes need megatron's variable_seq_lengths under PP (the
    pipeline exchanges each tensor's shape before it); equal shapes keep the fixed-shape path."""
    config = model.config  # the one TransformerConfig every chunk (and its DDP wrapper) holds
    varied = len({tuple(m.tokens.shape) for m in micro_batches}) > 1
    before = config.variable_seq_lengths
    config.variable_seq_lengths = before or (varied and model.par.pp > 1)
    try:
        yield
    finally:
        config.variable_seq_lengths = before


def run_schedule(model: BuiltModel, micro_batches: list[MicroBatch],
                 forward_step: Callable, *, forward_only: bool, collect_non_loss_data: bool):
    """Call megatron's forward-backward function for `model` over `micro_batches`.

    forward_step(chunk, micro_batch) -> (output_tensor, loss_func) as megatron expects; the data
    iterator (one per virtual stage) yields MicroBatch objects."""
    par, n = model.par, len(micro_batches)
    if par.vpp and n % par.pp:
        raise ValueError(f"interleaved pipeline: the number of micro-batches ({n}) must be a "
                         f"multiple of parallel.pipeline ({par.pp})")
    mb, seq = micro_batches[0].tokens.shape
    chunks = model.chunks

    def step(data_iterator, chunk):
        return forward_step(chunk, next(data_iterator))

    iterators = [iter(micro_batches) for _ in chunks]
    with cuda_to_cpu(), _shapes_for(model, micro_batches):
        return par.forward_backward_func(model.config)(  # explicit layout: runtime/parallel.py
            forward_step_func=step,
            data_iterator=iterators if len(chunks) > 1 else iterators[0],
            model=chunks if len(chunks) > 1 else chunks[0],
            num_microbatches=n, seq_length=seq, micro_batch_size=mb,
            forward_only=forward_only, collect_non_loss_data=collect_non_loss_data)


def forward_logprobs(model: BuiltModel, tokens: torch.Tensor, *,
                     micro_batch_size: Optional[int] = None,
                     plan: Optional[MicroBatchPlan] = None, temperature: float = 1.0,
                     fused: bool = False,
                     chunk_size: Optional[int] = None) -> Optional[torch.Tensor]:
    """[b, s] fp32 log p(tokens[t] | tokens[:t]) on the last pipeline stage, on the compute
    device, None elsewhere.

    tokens: [b, s] int64 global ids, identical on every rank of the model-parallel group.
    Micro-batches: `plan` (data/micro_batches.py: any rows, each trimmed to its width; positions
    past a row's width are 0 in the result), or micro_batch_size consecutive rows at full width.
    The result never visits the host (no synchronisation: the caller may be running this on a
    side CUDA stream); a caller that wants it there copies it once."""
    par = model.par
    vocab = model.spec.vocab_size
    plan = resolve_plan(*tokens.shape, micro_batch_size, plan)
    micro_batches = planned_micro_batches(tokens, plan)

    def forward_step(chunk, mbatch: MicroBatch):
        inner = getattr(chunk, "module", chunk)
        use_fused = fused and inner.post_process
        if use_fused:
            with mcore_compat.hidden_states_only(inner):
                out = chunk(input_ids=mbatch.tokens, position_ids=mbatch.position_ids,
                            attention_mask=mbatch.attention_mask)
        else:
            out = chunk(input_ids=mbatch.tokens, position_ids=mbatch.position_ids,
                        attention_mask=mbatch.attention_mask)

        def to_logprobs(output, non_loss_data=True):
            if use_fused:
                hidden = mcore_compat.gather_sequence_parallel(output, inner)
                lp = ops.fused_token_logprobs(
                    hidden, mcore_compat.output_weight(inner), mbatch.labels, par.tp_group,
                    temperature=temperature, vocab_size=vocab,
                    **({"chunk_size": chunk_size} if chunk_size else {}))
            else:
                lp = ops.token_logprobs(output, mbatch.labels, par.tp_group,
                                        temperature=temperature, chunk_size=chunk_size,
                                        vocab_size=vocab)
            return align_to_tokens(lp.detach())

        return out, to_logprobs

    with torch.no_grad():
        outputs = run_schedule(model, micro_batches, forward_step, forward_only=True,
                               collect_non_loss_data=True)
    if not par.is_last_stage:
        return None
    return scatter_rows(list(outputs), plan, tuple(tokens.shape))
