"""Estimated seconds of one RLAD step under a layout: what `rlad plan` ranks fitting layouts by.

Arithmetic on the two ModelSpecs, the Workload (launch/memory.py) and a `Hardware` whose numbers
are ASSUMPTIONS (defaults: an H100 SXM node: 989 dense bf16 TFLOP/s at 40% MFU, 3.35 TB/s HBM,
450 GB/s NVLink bus bandwidth per GPU, 50 GB/s InfiniBand per GPU, 50 GB/s host-to-device per
GPU, 10 us per collective); set them with `rlad plan --hw key=value` for other machines. The
estimate orders layouts; it does not predict a wall clock. Per GPU, with R = the rank's rows
(prompts_per_step / dp * group_size), s = prompt + response tokens, T = R * s, P = parameters,
b = bytes per value, L = layers, m = micro-batches per mini-batch, rate = peak * MFU:

  rollout          prefill 2 P_S R prompt / (tp pp) / rate, plus a memory-bound decode: every
                   new token reads the student's weights once per generation batch,
                   response * batches * (P_S b_S / tp + KV) / HBM, and 2 L_S TP collectives
  student compute  (2 + 6) P_S T / (tp pp) / rate       old-policy pass + forward/backward
                   (6: the on-policy update skips the pass, Workload.old_logprobs_pass)
  teacher forward  resident: 2 P_T T / (tp pp) / rate
                   streamed: its stages run one after another, each overlapping its layer
                   copies with its compute: pp * (max(compute, copy) + one layer's copy), copy =
                   L_T/pp layers' shard bytes / host-to-device bandwidth
  tp comm          per layer and micro-batch, 2 all-reduces of s*mb*h activations forward and 2
                   backward: bytes * 2 (tp-1)/tp / NVLink + latency; none at tp = 1
  pp bubble        (pp - 1) / m of the pipelined passes (old policy, update, resident teacher)
  dp all-reduce    the fp32 gradients, 2 (dp-1)/dp * P_S/(tp pp) * 4 bytes per optimizer step,
                   over InfiniBand when the DP group leaves the node (megatron's rank order puts
                   TP fastest, then DP), else NVLink
Attention's s^2 FLOPs, kernel launch overheads and compute/communication overlap are left out.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

from rlad_megatron.launch.memory import DTYPE_BYTES, Workload, layer_parameters
from rlad_megatron.models.spec import ModelSpec


@dataclass(frozen=True)
class Hardware:
    """Assumed machine numbers (per GPU); `rlad plan --hw KEY=VALUE` overrides each."""

    peak_tflops: float = 989.0
    """Dense bf16 TFLOP/s of one GPU (H100 SXM)."""
    mfu: float = 0.40
    """Fraction of the peak that training and prefill reach."""
    hbm_gbps: float = 3350.0
    """GPU memory bandwidth, GB/s (the decode is bound by it)."""
    intra_node_gbps: float = 450.0
    """NVLink all-reduce bus bandwidth per GPU, GB/s."""
    inter_node_gbps: float = 50.0
    """Network bandwidth per GPU across nodes, GB/s (400 Gb/s InfiniBand)."""
    host_to_device_gbps: float = 50.0
    """Host-to-device copy bandwidth per GPU, GB/s (PCIe gen5 x16, achieved), for a streamed
    teacher."""
    collective_latency_us: float = 10.0
    """Fixed cost of one collective, microseconds."""

    @classmethod
    def from_overrides(cls, overrides: list[str]) -> "Hardware":
        """KEY=VALUE strings -> Hardware; an unknown key or a non-positive value is refused."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {}
        for item in overrides:
            key, sep, value = item.partition("=")
            if not sep or key not in names:
                raise ValueError(f"--hw {item!r}: expected KEY=VALUE with KEY one of "
                                 f"{', '.join(sorted(names))}")
            try:
                values[key] = float(value)
            except ValueError:
                raise ValueError(f"--hw {key}: {value!r} is not a number") from None
            if not values[key] > 0:
                raise ValueError(f"--hw {key}: {value} must be > 0")
        return cls(**values)


@dataclass(frozen=True)
class StepTime:
    """Estimated seconds of one step on one GPU, by part."""

    rollout: float
    student_compute: float
    teacher_forward: float
    tp_comm: float
    pp_bubble: float
    dp_allreduce: float
    teacher_exchange: float = 0.0
    """A teacher on its own layout: the all-gather of token ids and all-reduce of log-probs."""

    @property
    def total(self) -> float:
        return sum(dataclasses.astuple(self))

    def parts(self) -> dict[str, float]:
        return dataclasses.asdict(self)


def _allreduce_s(nbytes: float, ranks: int, gbps: float, hw: Hardware) -> float:
    if ranks == 1:
        return 0.0
    return 2 * (ranks - 1) / ranks * nbytes / (gbps * 1e9) + hw.collective_latency_us * 1e-6


def estimate_step(teacher: ModelSpec, student: ModelSpec, tp: int, pp: int, dp: int,
                  w: Workload, *, gpus_per_node: int, hw: Hardware = Hardware(),
                  teacher_tp: Optional[int] = None,
                  teacher_pp: Optional[int] = None) -> StepTime:
    """Seconds of one RL step on one GPU of layout tp x pp x dp (see the module docstring); the
    teacher at teacher_tp x teacher_pp when it has its own layout (teacher.parallel): its DP
    ranks then score B / t_dp rows each, with their own TP all-reduces and pipeline bubble, and
    the row exchange adds an all-gather of the B x s token ids and an all-reduce of the B x s
    fp32 log-probs over the whole world (models/teacher_layout.py)."""
    t_tp, t_pp = teacher_tp or tp, teacher_pp or pp
    own = (t_tp, t_pp) != (tp, pp)
    world = tp * pp * dp
    t_dp = world // (t_tp * t_pp)
    rate = hw.peak_tflops * 1e12 * hw.mfu
    b_s, b_t = DTYPE_BYTES[w.student_dtype], DTYPE_BYTES[w.teacher_dtype]
    p_s, p_t = student.num_parameters(), teacher.num_parameters()
    rows = w.sequences_per_rank(dp)
    tokens = rows * w.seq_len
    m = w.micro_batches(dp)
    t_rows = w.prompts_per_step * w.group_size / t_dp if own else rows

    batches = -(-rows // w.rollout_batch(dp))
    kv = (2 * student.num_layers * student.num_query_groups * student.head_dim / tp
          * w.seq_len / 2 * min(rows, w.rollout_batch(dp)) * b_s)  # half-full on average
    per_token = (p_s * b_s / tp + kv) / (hw.hbm_gbps * 1e9)
    per_token += 2 * student.num_layers * hw.collective_latency_us * 1e-6 if tp > 1 else 0.0
    rollout = (2 * p_s * rows * w.prompt_len / (tp * pp) / rate
               + w.response_len * batches * per_token)

    passes = 8 if w.old_logprobs_pass else 6  # forward of the old-policy pass + fwd/bwd
    student_compute = passes * p_s * tokens / (tp * pp) / rate
    teacher_compute = 2 * p_t * t_rows * w.seq_len / (t_tp * t_pp) / rate
    if w.teacher_offload == "stream":
        layer_bytes = layer_parameters(teacher, t_tp) * b_t
        copy = teacher.num_layers // t_pp * layer_bytes / (hw.host_to_device_gbps * 1e9)
        one = layer_bytes / (hw.host_to_device_gbps * 1e9)
        teacher_forward = t_pp * (max(teacher_compute, copy) + one)
        pipelined = student_compute
    else:
        teacher_forward = teacher_compute
        pipelined = student_compute + (0.0 if own else teacher_compute)

    mb_tokens = w.micro_rows * w.seq_len
    tp_comm = 0.0
    for spec, b, count, size, stages, n_micro in (
            (student, b_s, 6 if w.old_logprobs_pass else 4, tp, pp, rows / w.micro_rows),
            (teacher, b_t, 2, t_tp, t_pp, t_rows / w.micro_rows)):
        if size > 1:
            one_ar = _allreduce_s(mb_tokens * spec.hidden_size * b, size, hw.intra_node_gbps, hw)
            tp_comm += spec.num_layers / stages * count * n_micro * one_ar

    pp_bubble = (pp - 1) / m * pipelined if pp > 1 else 0.0
    if own and t_pp > 1 and w.teacher_offload != "stream":  # streamed: stages in turn above
        pp_bubble += (t_pp - 1) / max(1.0, t_rows / w.micro_rows) * teacher_compute
    gbps = hw.inter_node_gbps if tp * dp > gpus_per_node else hw.intra_node_gbps
    dp_allreduce = w.mini_batches * _allreduce_s(p_s / (tp * pp) * 4, dp, gbps, hw)
    exchange = 0.0
    if own:
        cells = w.prompts_per_step * w.group_size * w.seq_len
        world_gbps = hw.inter_node_gbps if world > gpus_per_node else hw.intra_node_gbps
        exchange = (_allreduce_s(cells * 4, world, world_gbps, hw) + (world - 1) / world
                    * cells * 8 / (world_gbps * 1e9) + hw.collective_latency_us * 1e-6)
    return StepTime(rollout=rollout, student_compute=student_compute,
                    teacher_forward=teacher_forward, tp_comm=tp_comm, pp_bubble=pp_bubble,
                    dp_allreduce=dp_allreduce, teacher_exchange=exchange)
