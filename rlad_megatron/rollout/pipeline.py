"""This rank's model chunks as one pipeline stage of a generation step, with their KV caches.

One forward of the whole model for a step is: every chunk in pipeline order (chunk v of PP rank
r is global stage v * pp + r, so interleaved layouts work too); a chunk that is not the first
stage receives its input hidden states [s, b, h] from the previous PP rank (dist.recv) and is fed
with set_input_tensor; one that is not the last sends its output with dist.isend (a gloo send
blocks until the peer receives, so a blocking send would serialise the stages); the last stage
returns the LAST position's logits for this TP rank's vocabulary block, [b, V/tp], on the compute
device (the sampler runs there: no logits ever reach the host). The sampled tokens then go from
the last stage to every PP rank with one broadcast of device tensors (`share`), so that all
stages extend the same sequences.

KV cache: one megatron StaticInferenceContext(b, L) per chunk (the cache of that chunk's layers,
allocated on its first forward); the caller's first forward is the prefill over [b, P], later
ones feed [b, 1]; the offset is advanced here, GPTModel does not advance it.
Logits stay vocab-parallel: with an inference context GPTModel insists on gathering the
vocabulary (`runtime_gather_output`, gpt_model.py), so the last chunk runs with post_process off
(mcore_compat.hidden_states_only: the decoder's final norm still applies) and the output layer
is applied here to the last position only, with runtime_gather_output=False.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
from torch import Tensor

from rlad_megatron.models.build import BuiltModel
from rlad_megatron.runtime import devices, mcore_compat
from rlad_megatron.runtime.devices import compute_device


class StageRunner:
    """Generation forward of this rank's chunks (unwrapped from DDP) under `model.par`."""

    def __init__(self, model: BuiltModel):
        par = model.par
        if par.sequence_parallel:
            raise ValueError("rollout: generation with parallel.sequence_parallel is not "
                             "supported (megatron's own static controller rejects it as well)")
        self.chunks = model.modules
        self.pp, self.pp_rank = par.pp, par.pp_rank
        self.pp_group = par.pp_group
        self.stages = par.pp * len(self.chunks)
        self.hidden = model.config.hidden_size
        self.dtype = model.config.pipeline_dtype or model.config.params_dtype
        if self.pp > 1:
            self.prev = dist.get_global_rank(par.pp_group, (par.pp_rank - 1) % par.pp)
            self.next = dist.get_global_rank(par.pp_group, (par.pp_rank + 1) % par.pp)
            self.last_rank = par.last_stage_global_rank
        self.contexts: Optional[list] = None

    @property
    def is_last_stage(self) -> bool:
        """This rank holds the last stage, which samples."""
        return self.chunks[-1].post_process

    def start(self, batch_size: int, max_length: int, use_cache: bool) -> None:
        """Fresh KV caches for a batch (None without cache: every step recomputes the prefix)."""
        from megatron.core.inference.contexts import StaticInferenceContext

        self.contexts = ([StaticInferenceContext(batch_size, max_length) for _ in self.chunks]
                         if use_cache else None)

    def release(self) -> None:
        """Drop the KV caches (before the next generation micro-batch allocates its own)."""
        self.contexts = None

    def kv_cache_bytes(self) -> int:
        """Bytes of the KV caches this rank holds now (megatron allocates them at the first
        forward of a batch: [max_length, batch, kv heads / tp, head_dim] per layer, K and V)."""
        return sum(t.numel() * t.element_size() for ctx in self.contexts or ()
                   for kv in ctx.key_value_memory_dict.values() for t in kv)

    def _chunk_forward(self, chunk, ctx, tokens: Tensor, pos: Tensor, mask: Tensor) -> Tensor:
        kwargs = dict(inference_context=ctx, runtime_gather_output=True)
        if not chunk.post_process:
            return chunk(tokens, pos, mask, **kwargs)
        with mcore_compat.hidden_states_only(chunk):
            hidden = chunk(tokens, pos, mask, **kwargs)  # [s, b, h], final norm applied
        return self.vocab_logits(chunk, hidden[-1:])[0]  # [b, V/tp]

    @staticmethod
    def vocab_logits(chunk, hidden: Tensor) -> Tensor:
        """The last chunk's output layer on `hidden` [s, b, h] (final norm applied): this TP
        rank's block of the vocabulary, [s, b, V/tp], never gathered."""
        logits, _ = chunk.output_layer(hidden, weight=mcore_compat.output_weight(chunk),
                                       runtime_gather_output=False)
        return logits

    def through_stages(self, shape: tuple[int, ...], run_chunk) -> Tensor:
        """This rank's chunks in pipeline order (module docstring): a chunk that is not the first
        stage receives its input hidden states of `shape` from the previous PP rank, one that is
        not the last sends its output on. run_chunk(v, chunk) runs chunk v; returns the last
        chunk's output."""
        sends, out = [], None
        for v, chunk in enumerate(self.chunks):
            stage = v * self.pp + self.pp_rank
            if stage > 0:
                buf = torch.empty(shape, dtype=self.dtype, device=compute_device())
                dist.recv(buf, src=self.prev)
                chunk.set_input_tensor(buf)
            out = run_chunk(v, chunk)
            if stage < self.stages - 1:
                out = out.contiguous()
                sends.append((dist.isend(out, dst=self.next), out))
        for handle, _ in sends:
            handle.wait()
        return out

    def forward(self, tokens: Tensor, pos: Tensor, mask: Tensor) -> Optional[Tensor]:
        """tokens, pos: [b, s] int64; mask: [b, 1, s, L] bool. Returns the last position's
        vocab-parallel logits [b, V/tp] on the last stage, None elsewhere."""
        b, s = tokens.shape
        device = compute_device()  # a no-op move: the decode loop's tensors live there
        tokens, pos, mask = tokens.to(device), pos.to(device), mask.to(device)
        out = self.through_stages((s, b, self.hidden), lambda v, chunk: self._chunk_forward(
            chunk, self.contexts[v] if self.contexts is not None else None, tokens, pos, mask))
        for ctx in self.contexts or ():
            first = ctx.sequence_len_offset == 0
            ctx.increment_sequence_len_offset(s)
            if first:
                ctx.enable_decode_mode()
        return out if self.is_last_stage else None  # stays on the device: sampled there

    def share(self, values: Optional[Tensor], shape: tuple[int, ...]) -> Tensor:
        """The last stage's float64 `values` of `shape` (on the compute device), on every PP rank
        (one broadcast of device tensors)."""
        if self.pp == 1:
            return values
        buf = (values.contiguous() if self.is_last_stage else
               torch.empty(shape, dtype=torch.float64, device=compute_device()))
        devices.broadcast(buf, src=self.last_rank, group=self.pp_group)
        return buf
