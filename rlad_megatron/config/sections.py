"""The run configuration's sections other than the algorithm's (config/algorithms.py): the models,
data, rollout, optimizer, training, checkpoint, logging and evaluation. Each field is documented
where it is declared; RunConfig (config/run.py) gathers them with the algorithm's sections and the
components' own (ParallelConfig, TeacherParallelConfig, OptimizerSettings).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from rlad_megatron.data.formats import FORMATS
from rlad_megatron.data.tasks import ANSWER_FORMATS, EVAL_SPLITS, ON_BAD_ROW
from rlad_megatron.models.build import OptimizerSettings
from rlad_megatron.models.config import DTYPES
from rlad_megatron.models.teacher_stream import ACTIVATION_PLACES, OFFLOAD_MODES
from rlad_megatron.runtime.teacher_parallel import TeacherParallelConfig
from rlad_megatron.config.algorithms import choice
from rlad_megatron.config.on_policy import OLD_LOGPROBS_MODES

ROLLOUT_ENGINES = ("static", "continuous")
"""rollout.engine values (rollout/generate.py ENGINES)."""
LR_DECAY_STYLES = ("constant", "linear", "cosine")
"""megatron's OptimizerParamScheduler lr_decay_style values this trainer passes through."""


@dataclass
class ModelConfig:
    """One model: architecture, weights, tokenizer."""

    preset: Optional[str] = None
    """Named architecture (models/spec.py PRESETS); `spec` fields override it."""
    spec: Dict[str, Any] = field(default_factory=dict)
    """ModelSpec fields (models/spec.py) over the preset's, or over the checkpoint's recorded
    spec; with neither preset nor checkpoint, or with `arch` set and no preset, the spec alone
    (every required field). vocab_size 0: the tokenizer's size."""
    checkpoint: Optional[str] = None
    """Megatron checkpoint (a root, read at its latest iteration, or an iter_XXXXXXX folder):
    the weights, the spec when there is no preset (and `spec` has no `arch`), and the default
    tokenizer."""
    tokenizer: Optional[str] = None
    """Tokenizer path (sentencepiece .model, tokenizer.json or a HF dir); default: the
    checkpoint's."""
    dtype: str = choice("fp32", DTYPES)
    """Parameter dtype (bf16/fp16 need a GPU)."""
    random_init: bool = False
    """Allow random weights when no checkpoint is given (tests, smoke runs)."""


@dataclass
class TeacherConfig(ModelConfig):
    """The frozen teacher: a ModelConfig plus where its weights live (models/teacher_stream.py)."""

    offload: str = choice("none", OFFLOAD_MODES)
    """none: resident on the device, like the student | stream: decoder layers in host memory,
    visiting the device `stream_window` at a time, scored layer-major. With stream the teacher
    only scores (no teacher trajectories, evaluation or sft_distill traces: validated)."""
    stream_window: int = 2
    """offload=stream: decoder layers resident at once (the one computing + those prefetched)."""
    stream_activations: str = choice("device", ACTIVATION_PLACES)
    """offload=stream: where the [s, b, h] hidden states wait between layers: device | host
    (pinned; for batches whose activations do not fit next to the window)."""
    score_during_rollout: bool = False
    """Score each generation micro-batch (rollout.micro_batch_size) with the teacher as soon as it
    is generated, instead of all rows after the rollout: on a GPU the teacher's forward runs on a
    second CUDA stream beside the next micro-batch's decoding; on CPU the two interleave. The
    log-probs are the same. Needs rollout.micro_batch_size > 0; not with offload=stream (scored
    layer-major over the whole batch) or rollout.teacher_samples (teacher rows come later)."""
    parallel: TeacherParallelConfig = field(default_factory=TeacherParallelConfig)
    """The teacher's own TP / PP / VPP sizes (runtime/teacher_parallel.py), e.g. a wide-TP teacher
    beside a student with little model parallelism; 0 / null: the student's (the default: both
    share one layout and its groups). On its own layout the teacher only scores the student's
    rows, exchanged between the layouts by models/teacher_layout.py (resident or streamed, after
    or during the rollout), generates its trajectories (rollout.teacher_samples) and sft_distill's
    traces there (rollout/on_layout.py), and evaluates itself (eval.teacher) on its own groups.
    Validated: its TP x PP divides the world and its DP size the rows and prompts it handles."""


@dataclass
class DataConfig:
    """Prompts and rewards."""

    source: str = "reasoning_gym"
    """"reasoning_gym" or the path of a JSONL/Parquet file with question and answer fields."""
    task: str = "chain_sum"
    """reasoning-gym task name: the generated task (source: reasoning_gym), or the task recorded
    on a file's rows (the reasoning_gym reward scores with its scorer)."""
    task_config: Dict[str, Any] = field(default_factory=dict)
    """reasoning-gym dataset options, e.g. {min_terms: 2, max_terms: 5}."""
    levels: List[int] = field(default_factory=list)
    """Difficulty levels mixed in every split (data/miniature/levels.py): chain_sum's number of
    terms, knights_knaves' number of people, e.g. [3, 4, 5]; each split's size is divided evenly
    over them and evaluation reports each level. Source reasoning_gym only; task_config must not
    set the options a level fixes. Empty: the task_config alone."""
    format: str = choice("chat", FORMATS)
    """Prompt rendering: "chat" (tokenizer template / plain template) or "compact"
    (data/formats.py: short prompts and procedural solutions for tiny models)."""
    check_steps: bool = True
    """compact format: a completion reaches the reward only if every step of its chain is right
    (no reward for lucky answers); false = outcome reward on the answer alone."""
    system_prompt: Optional[str] = None
    """A system message put before every prompt (chat format); None: the template's default."""
    answer_prefill: str = ""
    """chat format: text that opens the model's turn after the rendered prompt, e.g. "<answer>":
    the model continues from it, and it is put back in front of each completion before the reward
    reads it (sft trains on what follows it in the gold solution). For a model that does not
    write the reward's answer format by itself (docs/own_model.md). Empty: none."""
    train_size: int = 2000
    """reasoning-gym prompts in the train split (over all levels)."""
    heldout_size: int = 128
    """reasoning-gym prompts in the held-out split: what reported evaluations measure."""
    validation_size: int = 0
    """reasoning-gym prompts in the validation split: where settings are chosen (eval.split)."""
    seed: int = 0
    """Seed of the data: reasoning-gym generation and the file's split; the train prompts' order
    is seeded by data.seed + seed."""
    question_field: str = "question"
    """File source: the field holding the prompt."""
    answer_field: str = "answer"
    """File source: the field holding the reference answer."""
    answer_format: str = choice("auto", ANSWER_FORMATS)
    """File source: how the reference answer is written (data/tasks.py; auto detects it)."""
    heldout_fraction: float = 0.05
    """File source: the share of rows held out for evaluation (by a hash of the question)."""
    on_bad_row: str = choice("error", ON_BAD_ROW)
    """A malformed file row or a prompt too long for the model: stop naming it (error), or skip
    and count it (skip)."""
    reward: str = "reasoning_gym"
    """Reward spec (data/rewards.py): a registered reward or a weighted sum, e.g.
    "math+0.1*format". Evaluation and sft_distill count a sample correct when its reward is
    at least 1."""


@dataclass
class RolloutConfig:
    """Sampling of the rollouts (rollout/generate.py)."""

    prompts_per_step: int = 16
    """Prompts per RL step, over all data-parallel ranks."""
    group_size: int = 8
    """G: samples per prompt (GRPO group)."""
    temperature: float = 1.0
    """Sampling temperature T of the rollouts, teacher trajectories and sft_distill traces (> 0
    for RL). The log-prob passes and the update, of every algorithm, take log-probs at T too:
    log_softmax(logits/T)."""
    top_p: float = 1.0
    """Nucleus sampling mass of the same generations (1: off). The log-prob passes score the
    unfiltered softmax(logits / T)."""
    top_k: int = 0
    """Sample among the k most likely tokens in the same generations (0: off); unfiltered
    log-probs as for top_p."""
    max_new_tokens: int = 64
    """Response tokens per sample at most (EOS included); also evaluation's, unless
    eval.max_new_tokens is set."""
    micro_batch_size: int = 0
    """Rows generated together in every generation, evaluation included (bounds the KV cache
    and logits; rlad plan sizes the KV cache by it); 0 = all of this rank's rows at once. The
    samples do not depend on it."""
    stop_check_every: int = 1
    """Decode steps between two host reads of the stop flag (has every row ended?), the decode
    loop's one synchronisation with the host (rollout/generate.py): k > 1 lets a GPU run k steps
    ahead, at the cost of up to k - 1 forwards after the last row ended. The samples do not
    depend on it."""
    engine: str = choice("continuous", ROLLOUT_ENGINES)
    """continuous (the default): at most rollout.max_live_rows rows in flight on megatron's
    dynamic inference context (a paged KV cache), a stopped row's slot taken by the next waiting
    row at the next step (rollout/continuous.py); static: generation micro-batches, each run
    until its longest row ends. Same tokens; log-probs within fp32 round-off (another attention
    kernel). On a GPU continuous needs flash-attn >= 2.7.3 or FA3 (refused before any work
    without; static runs anywhere)."""
    max_live_rows: int = 0
    """continuous: rows in flight at most (their KV blocks are reserved; rlad plan sizes the
    pool); 0 = rollout.micro_batch_size, or all of this rank's rows."""
    kv_block_size: int = 256
    """continuous: tokens per paged KV-cache block (flash-attn 2's paged kernel needs a multiple
    of 256; the CPU's torch attention takes any size)."""
    teacher_samples: int = 0
    """Teacher trajectories per prompt (algorithms rlad and grpo; the three-step reading of RLAD:
    teacher trajectories, selective gates, a joint loss; `imitation.*`): the teacher samples
    them with the rollout's sampler and settings, the reward scores them, and the ones passing
    the gates are imitated beside the RL loss (losses/joint.py). 0: the paper's reading only
    (the teacher scores the student's rollouts)."""


@dataclass
class OptimConfig(OptimizerSettings):
    """The student's optimizer (models/build.py OptimizerSettings) and its LR schedule."""

    warmup_steps: int = 0
    """Linear LR warmup from 0 to lr over this many training steps (train.steps' unit; for RL,
    x train.mini_batches optimizer steps)."""
    decay_style: str = choice("constant", LR_DECAY_STYLES)
    """LR after warmup (megatron's OptimizerParamScheduler): constant stays at lr; linear and
    cosine decay to min_lr at the last step."""


@dataclass
class TrainConfig:
    """Steps and how a step's sequences are cut for the log-prob passes and the update."""

    steps: int = 100
    """RL steps (or SFT steps for algorithm sft / sft_distill)."""
    micro_batch_size: int = 4
    """Sequences per micro-batch in the log-prob passes and the update."""
    max_tokens_per_micro_batch: int = 0
    """Token budget of a micro-batch in the log-prob passes and the update (data/micro_batches.py):
    rows sorted by length and cut into micro-batches of at most this many padded tokens (a longer
    row is a micro-batch of its own), each trimmed to its own longest row, the same count on
    every DP rank; micro_batch_size is then not used there. Loss and gradients are unchanged.
    Not with parallel.virtual_pipeline. 0 = off: micro_batch_size rows per micro-batch, padded
    to the step's longest sequence."""
    mini_batches: int = 1
    """Optimizer steps per RL step (the step's sequences are split into this many mini-batches).
    RL only: the SFT paths (sft, sft_distill) take one optimizer step per batch."""
    old_logprobs: str = choice("auto", OLD_LOGPROBS_MODES)
    """Where the loss's old-policy log-probs come from (config/on_policy.py). auto: from the
    update's own forward (detached; the same losses and gradients, one pass fewer) when the update
    is on-policy (train.mini_batches = 1, no teacher trajectories, selection.policy paper or
    advantage), else a separate pass before the update; pass: always the separate pass; reuse:
    always the update's forward, refused where the update is not on-policy."""
    sft_batch_size: int = 32
    """Prompts per SFT step (algorithms sft and sft_distill), over all DP ranks: one gold
    solution each, or one teacher trace, which has loss tokens only when its reward is >= 1."""
    max_consecutive_bad_steps: int = 3
    """A mini-batch with a NaN/Inf loss or gradient skips its optimizer step; abort after this
    many skipped optimizer steps in a row (counted across RL steps)."""


@dataclass
class CheckpointConfig:
    """Megatron torch_dist checkpoints in iter_XXXXXXX/ (bookkeeping/checkpoint.py)."""

    dir: Optional[str] = None
    """Checkpoint root (Megatron layout); default RUN_DIR/checkpoints."""
    save_every: int = 0
    """Save every N steps (0: only at the end and on preemption)."""
    keep_last: int = 2
    """After each save, the keep_last highest-numbered iterations in the checkpoint root and the
    one just saved stay; the other iter_XXXXXXX folders there are removed, whichever run wrote
    them."""
    resume: bool = True
    """Resume from the latest checkpoint in `dir` when there is one."""
    fallback: bool = True
    """When the latest checkpoint is corrupt or incomplete (a file missing, or of another size or
    sha256 than its manifest records), resume from the newest iteration that verifies, saying so;
    off: stop with an error naming the file."""
    verify_checksums: bool = True
    """Before resuming, check every file's sha256 against the manifest (rank 0 reads the whole
    checkpoint once, at about 1 GB/s); off: sizes only."""
    resume_other_run: bool = False
    """Resume even when the checkpoint's run differs in identity (algorithm, seed, models, data;
    bookkeeping/checkpoint.py RUN_IDENTITY); off: such a resume is refused, naming the keys."""


@dataclass
class LoggingConfig:
    """Where metrics go: RUN_DIR/metrics.jsonl always (bookkeeping/metrics.py)."""

    tensorboard: bool = True
    """Also write TensorBoard events to RUN_DIR/tensorboard."""
    wandb_project: Optional[str] = None
    """Also log to this Weights & Biases project (needs wandb installed)."""
    wandb_entity: Optional[str] = None
    """The W&B entity (team) of wandb_project."""
    log_every: int = 1
    """Log every N steps (and the last)."""
    progress: bool = True
    """A tqdm progress bar on rank 0."""


@dataclass
class EvalConfig:
    """Evaluation at the paper's protocol by default: temperature 0.6, top-p 0.95, mean@k and
    pass@k over k = 4 samples per prompt (train/evaluate.py)."""

    every: int = 0
    """Evaluate after every N-th step (0: only before training, when eval.at_start, and after
    the last step, which is always evaluated)."""
    split: str = choice("heldout", EVAL_SPLITS)
    """heldout (the reported split) | validation (for choosing settings; data.validation_size)."""
    num_prompts: int = 64
    """The first N prompts of the split (levels interleaved); 0 = the whole split."""
    k: int = 4
    """Samples per prompt: mean@k accuracy and pass@k."""
    temperature: float = 0.6
    """Sampling temperature of the evaluation; 0 = greedy (then k must be 1)."""
    top_p: float = 0.95
    """Nucleus sampling mass of the evaluation (no top-k)."""
    max_new_tokens: int = 0
    """0 = rollout.max_new_tokens."""
    seed: int = 0
    """Sampling seed of the evaluation, independent of the run's seed: runs that share it are
    evaluated on the same random numbers (paired comparisons)."""
    at_start: bool = True
    """Evaluate the student before the first step (step 0)."""
    teacher: bool = True
    """Also evaluate the teacher at step 0 (with eval.at_start), when the run loads one."""
    save_samples: bool = True
    """Write each evaluation's per-prompt scores to RUN_DIR/eval/step_XXXXXXX.json."""
