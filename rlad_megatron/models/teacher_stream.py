"""A teacher whose decoder layers live in host memory and visit the device one window at a time
(`teacher.offload: stream`), scored layer-major.

Why: the teacher is forward-only and TRRD needs one log-prob per sampled token, so its weights
are read once per step. Holding them resident makes the teacher dictate the cluster (a 405B
teacher on 64 GPUs for an 8B student); streaming them from host memory bounds its device
footprint to a window of layers plus what every step needs.

Residency. `stream_teacher` takes a built teacher whose weights are loaded (on GPU: built and
loaded on the host, models/build.py `on_host`) and keeps
  * on the device: the embedding, the rotary tables, the final norm and the output layer (what
    every micro-batch needs at its first and last stage), and at most `window` decoder layers;
  * in host memory (pinned where CUDA is present): every decoder layer's parameters, this rank's
    TP shards of this rank's PP stages only (`LayerStore`).
A layer "on the device" has its parameters' `.data` pointing at a device copy of the host
tensors; off the device they point at empty tensors, so `BuiltModel.parameter_bytes` counts what
is resident. On CPU "device" and "host" are the same memory: the device copy is a real copy, so
the tracker (`Residency`) measures exactly what a GPU would hold.

Layer-major scoring (`streamed_logprobs`). For the step's sequences on this rank, layer l runs
over every micro-batch before layer l+1, so each layer's weights cross to the device once per
step rather than once per micro-batch. On CUDA the next `window - 1` layers are copied on a side
stream while layer l computes, and layer l's device copy is released after its last
micro-batch. Every micro-batch goes through exactly the kernels of the resident forward
(embedding, each TransformerLayer, the final norm, ops.fused_token_logprobs), in the same
order per micro-batch, so the log-probs are bit-identical to the resident teacher's on CPU.

Activations between layers: one [s, mb, h] hidden-state tensor per micro-batch, i.e.
b x s x h x dtype bytes for the rank's b rows (the resident schedule holds one micro-batch's).
They grow linearly with the batch: 64 rows x 8K tokens x h 16384 in bf16 is 16 GiB. With
`activations="host"` they are parked in (pinned) host memory between layers and each
micro-batch's tensor visits the device for its layer only: device bytes drop to two
micro-batches' worth, at the cost of 2 x b x s x h bytes of copies per layer.

Pipeline parallelism: each PP stage streams its own layers, stage after stage (virtual stages in
their global order): stage g runs its layers over all micro-batches, sends the hidden states to
stage g+1, and the last stage computes the log-probs. Stages do not overlap, but the teacher's
time is dominated by moving weights, and each stage moves only its own; the alternative (every
PP rank holds the whole teacher and scores 1/pp of the rows) would overlap the stages but
multiply host memory by pp, which is the resource this mode is about. TP is the student's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.distributed as dist

from rlad_megatron import ops
from rlad_megatron.models.build import Teacher
from rlad_megatron.data.micro_batches import MicroBatchPlan, resolve_plan
from rlad_megatron.models.forward import align_to_tokens, planned_micro_batches, scatter_rows
from rlad_megatron.runtime import mcore_compat
from rlad_megatron.runtime.devices import compute_device

OFFLOAD_MODES = ("none", "stream")
"""teacher.offload: resident like the student, or decoder layers streamed from host memory."""
ACTIVATION_PLACES = ("device", "host")
"""teacher.stream_activations: where hidden states wait between streamed layers."""


def _unique_storage_bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        storage = t.untyped_storage()
        if storage.nbytes() and storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
    return total


@dataclass
class LayerStore:
    """One decoder layer's parameters: the module's parameters and their host copies."""

    params: list  # list[torch.nn.Parameter]
    host: list  # list[torch.Tensor], same shapes, host memory (pinned on CUDA machines)

    @property
    def nbytes(self) -> int:
        return sum(h.numel() * h.element_size() for h in self.host)


@dataclass
class Residency:
    """Teacher parameter bytes materialised on the device: now, and the peak since `reset`;
    `loads[i]`: how many times layer i was copied to the device since `reset`."""

    modules: list
    peak: int = 0
    loads: list = field(default_factory=list)
    transfer_s: float = 0.0

    def current(self) -> int:
        return _unique_storage_bytes(p for m in self.modules for p in m.parameters())

    def observe(self) -> None:
        self.peak = max(self.peak, self.current())

    def reset(self, num_layers: int) -> None:
        self.peak, self.loads, self.transfer_s = self.current(), [0] * num_layers, 0.0


class LayerWindow:
    """Host -> device copies of the rank's decoder layers, at most `size` resident at once."""

    def __init__(self, stores: list[LayerStore], size: int, residency: Residency):
        self.stores, self.size, self.residency = stores, size, residency
        self.device = compute_device()
        self.stream = torch.cuda.Stream() if self.device.type == "cuda" else None
        self.ready: dict[int, Optional[torch.cuda.Event]] = {}

    def _fetch(self, i: int) -> None:
        t0 = time.perf_counter()
        store = self.stores[i]
        if self.stream is None:
            for p, h in zip(store.params, store.host):
                p.data = h.clone()  # a real copy: the "device" copy on a CPU-only machine
            self.ready[i] = None
        else:
            self.stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self.stream):
                for p, h in zip(store.params, store.host):
                    p.data = h.to(self.device, non_blocking=True)
                event = torch.cuda.Event()
                event.record(self.stream)
            self.ready[i] = event
        self.residency.loads[i] += 1
        self.residency.transfer_s += time.perf_counter() - t0

    def acquire(self, i: int) -> None:
        """Make layer i usable on the compute stream; start copying the next ones (window)."""
        for j in range(i, min(i + self.size, len(self.stores))):
            if j not in self.ready:
                self._fetch(j)
        event = self.ready[i]
        if event is not None:
            t0 = time.perf_counter()
            torch.cuda.current_stream().wait_event(event)
            for p in self.stores[i].params:
                p.data.record_stream(torch.cuda.current_stream())
            self.residency.transfer_s += time.perf_counter() - t0
        self.residency.observe()

    def release(self, i: int) -> None:
        for p in self.stores[i].params:
            p.data = torch.empty(0, dtype=p.dtype, device=self.device)
        self.ready.pop(i, None)


@dataclass
class StreamedTeacher(Teacher):
    """A Teacher (models/build.py) whose decoder layers are streamed from host memory."""

    window: LayerWindow = None
    residency: Residency = None
    activations: str = "device"

    def host_bytes(self) -> int:
        return sum(s.nbytes for s in self.window.stores)

    def layer_counts(self) -> list[int]:
        """Decoder layers of each chunk on this rank, in execution order."""
        return [len(m.decoder.layers) for m in self.modules]


def check_stream_options(window: int, activations: str) -> None:
    """teacher.stream_window and teacher.stream_activations; config/validate.py runs this before
    any model is built."""
    if window < 1:
        raise ValueError(f"teacher.stream_window must be >= 1, got {window}")
    if activations not in ACTIVATION_PLACES:
        raise ValueError(f"teacher.stream_activations must be one of {ACTIVATION_PLACES}, got "
                         f"{activations!r}")


def stream_teacher(teacher: Teacher, *, window: int = 2,
                   activations: str = "device") -> StreamedTeacher:
    """Move `teacher`'s decoder layers to host memory and everything else to the device."""
    check_stream_options(window, activations)
    device = compute_device()
    stores = []
    for chunk in teacher.modules:
        for name, child in chunk.named_children():
            if name != "decoder":
                child.to(device)
        if chunk.decoder.final_layernorm is not None:
            chunk.decoder.final_layernorm.to(device)
        for layer in chunk.decoder.layers:
            params = list(layer.parameters())
            host = [p.data.detach().to("cpu") for p in params]
            if device.type == "cuda":
                host = [h.pin_memory() for h in host]
            stores.append(LayerStore(params=params, host=host))
            for p in params:
                p.data = torch.empty(0, dtype=p.dtype, device=device)
    residency = Residency(modules=teacher.modules)
    residency.reset(len(stores))
    return StreamedTeacher(spec=teacher.spec, chunks=teacher.chunks, config=teacher.config,
                           padded_vocab_size=teacher.padded_vocab_size, par=teacher.par,
                           window=LayerWindow(stores, window, residency), residency=residency,
                           activations=activations)


def _park(t: torch.Tensor, activations: str) -> torch.Tensor:
    if activations == "host" and t.device.type == "cuda":
        return t.to("cpu", non_blocking=True).pin_memory()
    return t


def _unpark(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    return t.to(device, non_blocking=True) if t.device != device else t


def _hidden_shape(teacher: StreamedTeacher, seq: int, mb: int) -> tuple[int, int, int]:
    sp = teacher.config.sequence_parallel
    return (seq // teacher.par.tp if sp else seq, mb, teacher.spec.hidden_size)


def _stage_io(teacher: StreamedTeacher, hidden: Optional[list], stage: int, last: int,
              shapes: list[tuple]) -> Optional[list]:
    """Send this stage's output to the next stage's owner / receive the previous one's."""
    par = teacher.par
    owner = stage % par.pp
    if par.pp == 1:
        return hidden
    peer = dist.get_global_rank(par.pp_group, (stage + 1) % par.pp)
    if owner == par.pp_rank and stage < last:
        for h in hidden:
            dist.send(h.contiguous(), dst=peer, group=par.pp_group)
        return None
    if (stage + 1) % par.pp == par.pp_rank and stage < last:
        src = dist.get_global_rank(par.pp_group, owner)
        out = []
        for shape in shapes:  # every rank knows each micro-batch's shape: the same plan
            buf = torch.empty(shape, dtype=teacher.config.params_dtype, device=compute_device())
            dist.recv(buf, src=src, group=par.pp_group)
            out.append(buf)
        return out
    return hidden


@torch.no_grad()
def streamed_logprobs(teacher: StreamedTeacher, tokens: torch.Tensor, *,
                      micro_batch_size: Optional[int] = None,
                      plan: Optional[MicroBatchPlan] = None, temperature: float = 1.0,
                      chunk_size: Optional[int] = None) -> Optional[torch.Tensor]:
    """[b, s] fp32 log p(tokens[t] | tokens[:t]) on the last pipeline stage (compute device),
    None elsewhere;
    the same contract and the same numbers as forward_logprobs(teacher, ..., fused=True),
    micro-batches included (`plan` or micro_batch_size).

    tokens: [b, s] int64 global ids, identical on every rank of the model-parallel group."""
    par = teacher.par
    plan = resolve_plan(*tokens.shape, micro_batch_size, plan)
    micro_batches = planned_micro_batches(tokens, plan)
    seq = max(plan.widths)
    device = compute_device()
    shapes = [_hidden_shape(teacher, w, len(r)) for r, w in zip(plan.rows, plan.widths)]
    chunks = teacher.modules
    stages = len(chunks) * par.pp
    layer_base = [sum(teacher.layer_counts()[:v]) for v in range(len(chunks))]
    teacher.residency.reset(len(teacher.window.stores))
    hidden, result = None, None
    for stage in range(stages):
        v, owner = divmod(stage, par.pp)
        if owner == par.pp_rank:
            inner = chunks[v]
            if inner.pre_process:
                hidden = [_park(inner.embedding(input_ids=m.tokens, position_ids=m.position_ids),
                                teacher.activations) for m in micro_batches]
            rope = inner.rotary_pos_emb(seq)  # [seq, 1, 1, d]: a micro-batch takes its first rows
            for k, layer in enumerate(inner.decoder.layers):
                index = layer_base[v] + k
                teacher.window.acquire(index)
                for i, m in enumerate(micro_batches):
                    out = layer(hidden_states=_unpark(hidden[i], device),
                                attention_mask=m.attention_mask,
                                rotary_pos_emb=rope[:m.tokens.shape[1]])
                    hidden[i] = _park(out[0] if isinstance(out, tuple) else out,
                                      teacher.activations)
                teacher.window.release(index)
            if inner.post_process:
                result = []
                for i, m in enumerate(micro_batches):
                    h = _unpark(hidden[i], device)
                    if inner.decoder.final_layernorm is not None:
                        h = inner.decoder.final_layernorm(h)
                    h = mcore_compat.gather_sequence_parallel(h, inner)
                    lp = ops.fused_token_logprobs(
                        h, mcore_compat.output_weight(inner), m.labels, par.tp_group,
                        temperature=temperature, vocab_size=teacher.spec.vocab_size,
                        **({"chunk_size": chunk_size} if chunk_size else {}))
                    result.append(align_to_tokens(lp))
        hidden = _stage_io(teacher, hidden, stage, stages - 1, shapes)
    return scatter_rows(result, plan, tuple(tokens.shape)) if par.is_last_stage else None


def stream_metrics(teacher: StreamedTeacher) -> dict[str, float]:
    """Per-step memory and transfer metrics of the last `streamed_logprobs` call."""
    mib = 1024 ** 2
    return {"teacher/resident_mib": teacher.residency.peak / mib,
            "teacher/host_mib": teacher.host_bytes() / mib,
            "time/teacher_transfer_s": teacher.residency.transfer_s}
