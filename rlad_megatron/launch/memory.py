"""Per-GPU memory of one RLAD layout: arithmetic on the two ModelSpecs, no torch, no GPU.

Student and teacher share one Megatron layout (TP x PP x DP, runtime/parallel.py). For a layout
(tp, pp, dp), every term below is bytes on one GPU, each taken at its heaviest pipeline stage
(an upper bound when pp > 1: weights peak on the last stage, activations on the first):

  teacher weights  P_T * b_T                   frozen: no gradients, no optimizer state
  student weights  P_S * b_S
  student grads    P_S * 4                     fp32 grad buffer (models/build.py sets
                                               DistributedDataParallelConfig(grad_reduce_in_fp32))
  optimizer        P_S * 12 / d  (bf16, fp16)  Adam: fp32 master copy + 2 fp32 moments
                   P_S * 8 / d   (fp32)        2 fp32 moments (the fp32 params are the master)
                   d = dp with optimizer.distributed (ZeRO-1), else 1
  activations      (L_S/pp) * m * A_layer      1F1B: the first stage holds m = min(pp,
                                               micro-batches) micro-batches of its L_S/pp layers
  with recompute   (L_S/pp) * m * 2sbh(/tp) + A_layer      (full recompute keeps each layer's
                                               input, and one layer's activations while recomputing)
  logits           b*s * V/tp * 2 * b_S        the student's logits of one micro-batch + their grad
  log-prob chunk   c * V/tp * 4                the chunked vocab-parallel log-prob workspace (fp32)
  KV cache         2 * L_S/pp * g_S/tp * d_head * (prompt + response) * B_roll * b_S; with
                   rollout.engine=continuous the block pool: (max_live_rows * ceil((prompt +
                   response) / block) + 2) * block tokens in place of (prompt + response) * B_roll
  reserve          CUDA context, NCCL buffers, allocator fragmentation (a flat amount)

With the teacher streamed from host memory (teacher.offload=stream, models/teacher_stream.py)
the teacher's device terms become
  teacher weights  (window * P_layer + P_head) * b_T     P_head: the stage's embedding, output
                                               layer and final norm (what every micro-batch needs)
  teacher activ.   B_rank * s * h_T * b_T (/tp with sequence parallelism): the hidden states of
                                               all the rank's rows between layers (layer-major)
and its layers move to host memory: L_T/pp * P_layer * b_T per rank (`teacher_host_bytes`).
Every rank holds its own host copy (DP replicas included), so a node needs
GPUs-per-node x that; sharing one copy between a node's DP replicas is not implemented.

So a bf16 student costs 2 + 4 + 12 = 18 bytes per parameter, or 6 + 12/dp with the distributed
optimizer (Megatron-LM's distributed-optimizer table for fp32 gradients), and a bf16 teacher 2.

P = parameters held by one rank of the heaviest stage: its L/pp layers (matrices / tp; norms
whole) plus the output layer and final norm (the last stage; a copy of the embedding when tied)
or, with pp = 1, the embedding too. V = padded vocabulary (models/config.py padded_vocab_size).

A_layer, activations of one layer for one micro-batch of b sequences of s = prompt + response
tokens (Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer Models",
Table 2; 2-byte activations, scaled by b_S / 2):
  sequence parallel   s*b*h * (34 + 5*a*s/h) / tp
  tensor parallel     s*b*h * (10 + 24/tp + 5*a*s/(h*tp))
The 5*a*s/h term is the stored [a, s, s] attention scores; flash / fused attention (the
transformer-engine spec on GPU) never stores them, so it is dropped with flash_attention=True.
The formula is the paper's GPT block (4h GeLU MLP, full multi-head attention); for SwiGLU and
grouped-query attention it is an estimate of the same order. The teacher's forward-only passes
keep no activations beyond the log-prob chunk.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Optional

from rlad_megatron.models.config import padded_vocab_size
from rlad_megatron.models.spec import ModelSpec

GIB = 1 << 30
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
GRAD_BYTES = 4
"""The student's gradient buffer is fp32 (models/build.py: grad_reduce_in_fp32=True)."""
LOGPROB_CHUNK_BYTES = 256 << 20
"""fp32 bytes of one log-prob chunk on a GPU (ops/chunks.py DEFAULT_CHUNK_BYTES["cuda"])."""


@dataclass(frozen=True)
class Workload:
    """What one RL step asks of a GPU, besides the weights.

    Most fields are run-config values: RUN_CONFIG_KEYS names the RunConfig key each is read
    from (`from_run_config`, the one place the planner reads a run config). Their defaults here
    describe a GPU run for `rlad plan --teacher T --student S` without a run config (bf16
    models, the distributed optimizer, 1024-token responses), not RunConfig's CPU-safe defaults.
    `old_logprobs_pass` is derived from the run config; PLANNER_ONLY lists the assumptions no run
    config holds."""

    # ---- read from the run config (RUN_CONFIG_KEYS)
    response_len: int = 1024
    """Response tokens per sample at most."""
    micro_batch_size: int = 1
    """Sequences per micro-batch of the log-prob passes and the update."""
    mini_batches: int = 1
    """Optimizer steps per RL step."""
    max_tokens_per_micro_batch: int = 0
    """A micro-batch holds at most this many padded tokens (and at least one row); estimated at
    the worst case, rows of seq_len tokens. 0: micro_batch_size rows."""
    prompts_per_step: int = 16
    """Prompts per RL step, over all data-parallel ranks."""
    group_size: int = 8
    """Samples per prompt."""
    rollout_micro_batch: int = 0
    """Sequences generated together (the KV cache); 0 = all of a rank's."""
    rollout_engine: str = "continuous"
    """continuous (a pool of KV blocks, max_live_rows rows x seq_len rounded up to
    kv_block_size, + 2 blocks) or static (a KV cache of rollout_batch rows x seq_len)."""
    max_live_rows: int = 0
    """continuous: rows in flight at most; 0 = rollout_batch."""
    kv_block_size: int = 256
    """continuous: tokens per KV block."""
    student_dtype: str = "bf16"
    """The student's weights and activations."""
    teacher_dtype: str = "bf16"
    """The teacher's weights."""
    distributed_optimizer: bool = True
    """ZeRO-1: the optimizer state sharded over DP."""
    sequence_parallel: bool = False
    """Megatron's sequence parallelism (activations sharded over TP)."""
    teacher_offload: str = "none"
    """none | stream (the teacher's decoder layers in host memory)."""
    stream_window: int = 2
    """Teacher layers resident at once when streamed."""
    # ---- derived from the run config
    old_logprobs_pass: bool = True
    """The step runs the old-policy pass (False: the on-policy update reads its own forward's
    log-probs; train.old_logprobs with config/on_policy.py reuses_update_forward)."""
    # ---- planner-only assumptions (PLANNER_ONLY): no run config holds them
    prompt_len: int = 1024
    """Prompt tokens (the data's, unknown before the prompts are tokenized)."""
    flash_attention: bool = True
    """Attention without stored [s, s] scores (transformer-engine on GPU)."""
    recompute: bool = False
    """Full activation recompute (the trainer does not offer it yet; reported for comparison)."""
    logprob_chunk_tokens: Optional[int] = None
    """Tokens per log-prob chunk; None: as many as fit LOGPROB_CHUNK_BYTES (the GPU default)."""
    reserve_gib: float = 4.0
    """GiB kept free per GPU (CUDA context, allocator fragmentation, NCCL buffers)."""

    @classmethod
    def from_run_config(cls, cfg, **explicit) -> "Workload":
        """The workload of a run config (config/run.py RunConfig): every RUN_CONFIG_KEYS field
        read through its key, old_logprobs_pass derived, the PLANNER_ONLY fields at their
        defaults; `explicit` fields win."""
        from rlad_megatron.config.on_policy import reuses_update_forward
        from rlad_megatron.config.schema import get

        read = {name: get(cfg, key) for name, key in RUN_CONFIG_KEYS.items()}
        return cls(**{**read, "old_logprobs_pass": not reuses_update_forward(cfg), **explicit})

    @property
    def seq_len(self) -> int:
        return self.prompt_len + self.response_len

    def sequences_per_rank(self, dp: int) -> int:
        return self.prompts_per_step // dp * self.group_size

    def rollout_batch(self, dp: int) -> int:
        return self.rollout_micro_batch or self.sequences_per_rank(dp)

    def kv_cache_tokens(self, dp: int) -> int:
        """Token slots of the rollout's KV cache per rank: rows x seq_len (static), or the
        continuous engine's block pool (rollout/continuous.py ContinuousStages)."""
        if self.rollout_engine != "continuous":
            return self.seq_len * self.rollout_batch(dp)
        live = min(self.max_live_rows or self.rollout_batch(dp), self.sequences_per_rank(dp))
        blocks = live * -(-self.seq_len // self.kv_block_size) + 2
        return blocks * self.kv_block_size

    @property
    def micro_rows(self) -> float:
        """Rows of seq_len tokens one micro-batch holds: micro_batch_size, or with a token budget
        budget / seq_len (at least 1: a longer row is a micro-batch of its own)."""
        if self.max_tokens_per_micro_batch:
            return max(1.0, self.max_tokens_per_micro_batch / self.seq_len)
        return float(self.micro_batch_size)

    def micro_batches(self, dp: int) -> int:
        """Micro-batches per mini-batch on one rank (at least 1)."""
        return max(1, int(self.sequences_per_rank(dp) // self.mini_batches // self.micro_rows))


RUN_CONFIG_KEYS = {
    "response_len": "rollout.max_new_tokens",
    "micro_batch_size": "train.micro_batch_size",
    "mini_batches": "train.mini_batches",
    "max_tokens_per_micro_batch": "train.max_tokens_per_micro_batch",
    "prompts_per_step": "rollout.prompts_per_step",
    "group_size": "rollout.group_size",
    "rollout_micro_batch": "rollout.micro_batch_size",
    "rollout_engine": "rollout.engine",
    "max_live_rows": "rollout.max_live_rows",
    "kv_block_size": "rollout.kv_block_size",
    "student_dtype": "student.dtype",
    "teacher_dtype": "teacher.dtype",
    "distributed_optimizer": "optimizer.distributed",
    "sequence_parallel": "parallel.sequence_parallel",
    "teacher_offload": "teacher.offload",
    "stream_window": "teacher.stream_window",
}
"""Workload field -> the dotted RunConfig key it is read from: the one source of the mapping
(Workload.from_run_config reads through it, launch/plan_inputs.py names the key in its errors;
tests/unit/launch/test_workload.py holds that every key exists in the schema)."""
PLANNER_ONLY = ("prompt_len", "flash_attention", "recompute", "logprob_chunk_tokens",
                "reserve_gib")
"""Workload fields that are assumptions of the plan, not run-config values: the prompt length
(the data's), the GPU's attention kernel, activation recompute, the log-prob chunk and the memory
reserve. `rlad plan` takes them from its flags or their defaults."""


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes on one GPU, per part (see the module docstring for each formula)."""

    teacher_weights: int
    student_weights: int
    student_grads: int
    optimizer_state: int
    activations: int
    activations_recompute: int
    logits: int
    logprob_chunk: int
    teacher_activations: int
    kv_cache: int
    reserve: int
    teacher_exchange: int = 0
    """A teacher on its own layout (teacher.parallel): the step's gathered token ids and
    log-probs, B x s x (8 + 4) bytes (models/teacher_layout.py)."""

    def total(self, recompute: bool = False) -> int:
        parts = asdict(self)
        parts.pop("activations_recompute" if not recompute else "activations")
        return sum(parts.values())

    def parts(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def layer_parameters(spec: ModelSpec, tp: int) -> int:
    """Parameters of one transformer layer held by one TP rank."""
    h, f, d = spec.hidden_size, spec.ffn_hidden_size, spec.head_dim
    q, kv = spec.num_attention_heads * d, spec.num_query_groups * d
    sharded = h * (q + 2 * kv) + q * h + 3 * h * f          # qkv, proj, fc1 (gate+up), fc2
    sharded += (q + 2 * kv) if spec.qkv_bias else 0
    replicated = 2 * h + (2 * d if spec.qk_layernorm else 0)  # two RMSNorms, qk norms
    return sharded // tp + replicated


def stage_parameters(spec: ModelSpec, tp: int, pp: int) -> int:
    """Parameters held by one rank of the heaviest pipeline stage (the last one when pp > 1)."""
    vocab = padded_vocab_size(spec.vocab_size, spec.make_vocab_size_divisible_by, tp)
    embedding = vocab * spec.hidden_size // tp
    layers = spec.num_layers // pp * layer_parameters(spec, tp)
    if pp == 1:
        return layers + embedding * (1 if spec.tie_embeddings else 2) + spec.hidden_size
    return layers + embedding + spec.hidden_size             # output layer (or its tied copy), norm


def head_parameters(spec: ModelSpec, tp: int, pp: int) -> int:
    """Parameters outside the decoder layers on one rank of the heaviest stage: the embedding,
    the output layer (or its tied copy) and the final norm."""
    return stage_parameters(spec, tp, pp) - spec.num_layers // pp * layer_parameters(spec, tp)


def teacher_device_parameters(spec: ModelSpec, tp: int, pp: int, w: "Workload") -> int:
    """Teacher parameters on one GPU: the whole stage, or (streamed) the window plus the head."""
    if w.teacher_offload != "stream":
        return stage_parameters(spec, tp, pp)
    window = min(w.stream_window, spec.num_layers // pp)
    return window * layer_parameters(spec, tp) + head_parameters(spec, tp, pp)


def teacher_host_bytes(spec: ModelSpec, tp: int, pp: int, w: "Workload") -> int:
    """Host memory one rank holds for a streamed teacher (0 when resident)."""
    if w.teacher_offload != "stream":
        return 0
    return spec.num_layers // pp * layer_parameters(spec, tp) * DTYPE_BYTES[w.teacher_dtype]


def layer_activation_bytes(spec: ModelSpec, w: Workload, tp: int) -> int:
    """A_layer: activations one layer keeps for the backward of one micro-batch."""
    s, b, h, a = w.seq_len, w.micro_rows, spec.hidden_size, spec.num_attention_heads
    scores = 0.0 if w.flash_attention else 5 * a * s / h
    if w.sequence_parallel:
        per_token = (34 + scores) / tp
    else:
        per_token = 10 + 24 / tp + scores / tp
    return int(s * b * h * per_token * DTYPE_BYTES[w.student_dtype] / 2)


def estimate(teacher: ModelSpec, student: ModelSpec, tp: int, pp: int, dp: int,
             w: Workload, *, teacher_tp: Optional[int] = None,
             teacher_pp: Optional[int] = None) -> MemoryEstimate:
    """Per-GPU memory of RLAD with `teacher` and `student` under layout tp x pp x dp (the
    teacher at teacher_tp x teacher_pp when it has its own layout, teacher.parallel)."""
    t_tp, t_pp = teacher_tp or tp, teacher_pp or pp
    own = (t_tp, t_pp) != (tp, pp)
    t_rows = (w.prompts_per_step * w.group_size // (tp * pp * dp // (t_tp * t_pp)) if own
              else w.sequences_per_rank(dp))  # rows the teacher scores on this rank
    b_s, b_t = DTYPE_BYTES[w.student_dtype], DTYPE_BYTES[w.teacher_dtype]
    p_s, p_t = stage_parameters(student, tp, pp), teacher_device_parameters(teacher, t_tp, t_pp, w)
    optimizer_bytes = (12 if b_s == 2 else 8) / (dp if w.distributed_optimizer else 1)

    layers, in_flight = student.num_layers // pp, min(pp, w.micro_batches(dp))
    a_layer = layer_activation_bytes(student, w, tp)
    kept_input = int(w.seq_len * w.micro_rows * student.hidden_size * b_s)
    kept_input //= tp if w.sequence_parallel else 1

    vocab_shard = max(padded_vocab_size(m.vocab_size, m.make_vocab_size_divisible_by, t) // t
                      for m, t in ((teacher, t_tp), (student, tp)))
    tokens = int(w.micro_rows * w.seq_len)
    chunk = w.logprob_chunk_tokens or max(1, LOGPROB_CHUNK_BYTES // (4 * vocab_shard))
    kv_heads = student.num_query_groups // tp
    return MemoryEstimate(
        teacher_weights=p_t * b_t,
        student_weights=p_s * b_s,
        student_grads=p_s * GRAD_BYTES,
        optimizer_state=int(p_s * optimizer_bytes),
        activations=layers * in_flight * a_layer,
        activations_recompute=layers * in_flight * kept_input + a_layer,
        logits=tokens * vocab_shard * 2 * b_s,
        logprob_chunk=min(chunk, tokens) * vocab_shard * 4,
        teacher_activations=(t_rows * w.seq_len * teacher.hidden_size * b_t
                             // (tp if w.sequence_parallel and not own else 1)
                             if w.teacher_offload == "stream" else 0),
        kv_cache=2 * layers * kv_heads * student.head_dim * w.kv_cache_tokens(dp) * b_s,
        reserve=int(w.reserve_gib * GIB),
        teacher_exchange=(w.prompts_per_step * w.group_size * w.seq_len * 12 if own else 0),
    )
