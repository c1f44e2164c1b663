"""validate_run_config(): every semantic check of a run configuration, before any work starts.

Each error names the dotted key (and both values where two disagree). Checks that need the
models' architecture (TP divides heads, PP divides layers, vocabularies agree) run in
models/config.py when the models are resolved; tokenizers are compared in train/setup.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from rlad_megatron.data.miniature.levels import check_level_sizes, level_config
from rlad_megatron.data.formats import COMPACT_TASKS
from rlad_megatron.data.tasks import check_task_config
from rlad_megatron.models.layout_check import data_parallel_problem
from rlad_megatron.models.spec import PRESETS, ModelSpec
from rlad_megatron.models.teacher_stream import check_stream_options
from rlad_megatron.config.run import (REFERENCE_KL_ALGORITHMS, TRAJECTORY_ALGORITHMS,
                                      RunConfig)
from rlad_megatron.config.active import check_active
from rlad_megatron.config.generation import check_generations
from rlad_megatron.config.on_policy import fast_path_blockers
from rlad_megatron.config.schema import check_choices, check_finite, get


def _positive(cfg, *keys: str, allow_zero: bool = False) -> None:
    for key in keys:
        value = get(cfg, key)
        if value < 0 or (value == 0 and not allow_zero):
            raise ValueError(f"{key} must be {'>= 0' if allow_zero else '> 0'}, got {value}")


def _raise(problem: Optional[str]) -> None:
    if problem:
        raise ValueError(problem)


def _model(cfg: RunConfig, role: str, check_files: bool = True) -> None:
    m = getattr(cfg, role)
    if not (m.preset or m.spec or m.checkpoint):
        raise ValueError(f"{role}: set {role}.preset, {role}.spec or {role}.checkpoint")
    ModelSpec.check_fields(m.spec, f"{role}.spec")
    if m.preset and m.preset not in PRESETS:
        raise ValueError(f"{role}.preset: unknown model preset {m.preset!r}; known: "
                         f"{', '.join(sorted(PRESETS))}")
    if not check_files:
        return
    if m.checkpoint is not None and not Path(m.checkpoint).exists():
        raise ValueError(f"{role}.checkpoint: {m.checkpoint} does not exist")
    if m.checkpoint is None and not m.random_init:
        raise ValueError(f"{role}.checkpoint is not set: give the weights to load, or set "
                         f"{role}.random_init=true to start from random weights")
    if m.tokenizer is not None and not Path(m.tokenizer).exists():
        raise ValueError(f"{role}.tokenizer: {m.tokenizer} does not exist")
    if m.tokenizer is None and m.checkpoint is None:
        raise ValueError(f"{role}.tokenizer is not set and there is no {role}.checkpoint to take "
                         "it from")


def validate_run_config(cfg: RunConfig, world_size: int = 1, check_files: bool = True) -> None:
    """Raise ValueError naming the key of the first problem. check_files=False skips the checks
    that model checkpoints and tokenizers exist (for runs whose files an earlier stage makes)."""
    check_finite(cfg)  # every float field (config/schema.py)
    check_choices(cfg)  # every registry-backed field (config/schema.py)
    check_active(cfg)  # every option of a section the run does not use (config/active.py)
    cfg.parallel.validate(world_size)
    dp = world_size // (cfg.parallel.tensor * cfg.parallel.pipeline)
    _model(cfg, "student", check_files)
    _imitation(cfg)
    _teacher_offload(cfg)
    _teacher_during_rollout(cfg)
    if cfg.needs_teacher:
        _teacher_parallel(cfg, world_size)
    _old_logprobs(cfg)
    if cfg.needs_teacher:
        _model(cfg, "teacher", check_files)
    _positive(cfg, "train.steps", "train.micro_batch_size", "train.mini_batches",
              "train.sft_batch_size", "train.max_consecutive_bad_steps", "rollout.prompts_per_step",
              "checkpoint.keep_last", "optimizer.lr", "logging.log_every")
    _positive(cfg, "checkpoint.save_every", "eval.every", "optimizer.warmup_steps",
              "optimizer.weight_decay", "optimizer.clip_grad", "data.heldout_size",
              "data.validation_size", "eval.num_prompts", "eval.seed",
              "train.max_tokens_per_micro_batch", allow_zero=True)
    check_generations(cfg)  # rollout.* and eval.* sampling: GenerationConfig.validate's rules
    _rollout_engine(cfg)
    if cfg.is_rl and cfg.rollout.group_size < 2:
        raise ValueError(f"rollout.group_size: {cfg.rollout.group_size} must be >= 2 for "
                         f"{cfg.algorithm} (GRPO advantages compare samples of one prompt)")
    if cfg.rollout.temperature == 0 and cfg.is_rl:
        raise ValueError("rollout.temperature must be > 0 for RL (greedy samples of a group "
                         "are identical)")
    is_sft = not cfg.is_rl
    if is_sft:
        _raise(data_parallel_problem("train.sft_batch_size", cfg.train.sft_batch_size, dp))
        per_rank, what = cfg.train.sft_batch_size // dp, "train.sft_batch_size"
    else:
        _raise(data_parallel_problem("rollout.prompts_per_step", cfg.rollout.prompts_per_step, dp,
                                     " (a prompt's group of samples stays on one rank)"))
        per_rank = cfg.rollout.prompts_per_step // dp * (cfg.rollout.group_size +
                                                          cfg.rollout.teacher_samples)
        what = "rollout.prompts_per_step * (rollout.group_size + rollout.teacher_samples)"
    # the SFT paths take one optimizer step per batch: mini_batches is an RL setting
    m, mini = cfg.train.micro_batch_size, cfg.train.mini_batches
    step, names = ((m, f"train.micro_batch_size = {m}") if is_sft else
                   (m * mini, f"train.micro_batch_size * train.mini_batches = {m} * {mini}"))
    if cfg.train.max_tokens_per_micro_batch:  # micro-batches come from the token budget
        _token_budget(cfg)
        step, names = (1, "1") if is_sft else (mini, f"train.mini_batches = {mini}")
    if per_rank % step:
        raise ValueError(f"{what} per data-parallel rank = {per_rank} is not divisible by "
                         f"{names}")
    if cfg.parallel.virtual_pipeline and (per_rank // cfg.train.mini_batches //
                                          cfg.train.micro_batch_size) % cfg.parallel.pipeline:
        raise ValueError("interleaved pipeline: micro-batches per mini-batch must be a multiple "
                         f"of parallel.pipeline = {cfg.parallel.pipeline}")
    if cfg.data.source != "reasoning_gym" and not Path(cfg.data.source).is_file():
        raise ValueError(f"data.source: {cfg.data.source} is neither 'reasoning_gym' nor a file")
    if cfg.optimizer.distributed:
        import torch
        if not torch.cuda.is_available():
            raise ValueError("optimizer.distributed: megatron-core's distributed optimizer state "
                             "does not checkpoint exactly on CPU (no apex/transformer-engine); "
                             "set optimizer.distributed=false")
    _optimizer(cfg)
    if cfg.optimizer.min_lr > cfg.optimizer.lr:
        raise ValueError(f"optimizer.min_lr: {cfg.optimizer.min_lr} > optimizer.lr: "
                         f"{cfg.optimizer.lr}")
    _losses(cfg)
    d = cfg.data
    if cfg.eval.split == "validation" and d.validation_size == 0:
        raise ValueError("eval.split: validation needs data.validation_size > 0")
    if d.levels:
        if d.source != "reasoning_gym":
            raise ValueError("data.levels: difficulty levels need data.source=reasoning_gym")
        if len(set(d.levels)) != len(d.levels):
            raise ValueError(f"data.levels: {list(d.levels)} repeats a level")
        check_level_sizes({k: getattr(d, k) for k in
                           ("train_size", "heldout_size", "validation_size")}, d.levels)
    if d.source == "reasoning_gym":  # reasoning-gym's own config class checks the options
        for level in d.levels or [None]:
            check_task_config(d.task, d.task_config if level is None
                              else level_config(d.task, level, d.task_config))
    if d.format == "compact":
        if d.source != "reasoning_gym" or d.task not in COMPACT_TASKS:
            raise ValueError(f"data.format: compact renders reasoning-gym tasks "
                             f"{', '.join(COMPACT_TASKS)} only, not "
                             f"{d.task if d.source == 'reasoning_gym' else d.source!r}")
    if cfg.eval.k > 1 and cfg.eval.temperature == 0:
        raise ValueError(f"eval.k: {cfg.eval.k} samples per prompt need eval.temperature > 0")


def _losses(cfg: RunConfig) -> None:
    """Every loss section's ranges, whichever algorithm is chosen (LossConfig.validate; the named
    choices, agg and kl_estimator among them, are checked by check_choices), and the reference
    KL's algorithms."""
    cfg.loss.validate()
    if cfg.kl_beta and cfg.algorithm not in REFERENCE_KL_ALGORITHMS:
        raise ValueError(f"loss.{cfg.rl_loss_name}.kl_beta: the reference KL applies to "
                         f"algorithm {' or '.join(REFERENCE_KL_ALGORITHMS)}, not {cfg.algorithm}")


def _rollout_engine(cfg: RunConfig) -> None:
    """rollout.engine=continuous runs on megatron's dynamic inference context: on a GPU its
    flash-attn kernels (runtime/paged_attention.py)."""
    if cfg.rollout.engine != "continuous":
        return
    from rlad_megatron.runtime.paged_attention import check_dynamic_attention

    check_dynamic_attention()


def _imitation(cfg: RunConfig) -> None:
    """rollout.teacher_samples and the imitation.* options (ImitationConfig.validate; checked
    whether or not they are used: a bad value is a typo either way)."""
    k = cfg.rollout.teacher_samples
    if k < 0:
        raise ValueError(f"rollout.teacher_samples must be >= 0, got {k}")
    if k and cfg.algorithm not in TRAJECTORY_ALGORITHMS:
        raise ValueError(f"rollout.teacher_samples: {k} teacher trajectories join the RL loss of "
                         f"algorithm {' or '.join(TRAJECTORY_ALGORITHMS)}, not {cfg.algorithm}")
    t = cfg.teacher
    if k and not (t.preset or t.spec or t.checkpoint):
        raise ValueError(f"rollout.teacher_samples: {k} needs a teacher to generate the "
                         f"trajectories: set teacher.checkpoint (or teacher.preset)")
    cfg.imitation.validate()


def _optimizer(cfg: RunConfig) -> None:
    """The optimizer's own ranges (the other optimizer's options are refused by
    config/active.py)."""
    if not 0 <= cfg.optimizer.sgd_momentum < 1:
        raise ValueError(f"optimizer.sgd_momentum must be in [0, 1), got "
                         f"{cfg.optimizer.sgd_momentum}")


def _token_budget(cfg: RunConfig) -> None:
    """train.max_tokens_per_micro_batch: micro-batches of different shapes; megatron's
    interleaved schedule cannot exchange them (train/step.py micro_batch_plan)."""
    if cfg.parallel.virtual_pipeline:
        raise ValueError("train.max_tokens_per_micro_batch is not supported with "
                         "parallel.virtual_pipeline: megatron's interleaved schedule exchanges "
                         "micro-batches of different shapes out of order (train/step.py); use "
                         "a plain pipeline or train.max_tokens_per_micro_batch=0")


def _old_logprobs(cfg: RunConfig) -> None:
    """train.old_logprobs=reuse only where the update is on-policy (config/on_policy.py)."""
    if cfg.train.old_logprobs != "reuse":
        return
    if not cfg.is_rl:
        raise ValueError(f"train.old_logprobs: reuse is an RL setting; algorithm {cfg.algorithm} "
                         "has no old-policy log-probs")
    blockers = fast_path_blockers(cfg)
    if blockers:
        raise ValueError("train.old_logprobs: reuse needs an on-policy update, but "
                         + "; ".join(blockers) + " (use auto or pass)")


def _teacher_during_rollout(cfg: RunConfig) -> None:
    t = cfg.teacher
    if not t.score_during_rollout:
        return
    if not cfg.needs_teacher or cfg.algorithm == "sft_distill":
        raise ValueError(f"teacher.score_during_rollout: algorithm {cfg.algorithm} has no "
                         "teacher scoring pass")
    if not cfg.rollout.micro_batch_size and cfg.rollout.engine == "static":
        raise ValueError("teacher.score_during_rollout needs rollout.micro_batch_size > 0 "
                         "(the teacher scores each generation micro-batch) or "
                         "rollout.engine=continuous (it scores each group as it stops)")
    if t.offload == "stream":
        raise ValueError("teacher.score_during_rollout: a streamed teacher (teacher.offload="
                         "stream) scores the whole batch layer-major; use one or the other")
    if cfg.rollout.teacher_samples:
        raise ValueError("teacher.score_during_rollout with rollout.teacher_samples > 0 is not "
                         "supported (the teacher rows are generated after the student's)")


def _teacher_offload(cfg: RunConfig) -> None:
    """teacher.offload=stream: the streamed teacher only scores tokens (models/teacher_stream.py);
    everything that would generate with it, one token at a time through every layer's copy, is
    refused rather than made silently slow."""
    t = cfg.teacher
    check_stream_options(t.stream_window, t.stream_activations)
    if t.offload != "stream":
        return
    if cfg.algorithm == "sft_distill":
        raise ValueError("teacher.offload=stream: algorithm sft_distill generates its traces with "
                         "the teacher, which a streamed teacher does not do; use offload=none")
    if cfg.rollout.teacher_samples:
        raise ValueError(f"teacher.offload=stream: rollout.teacher_samples="
                         f"{cfg.rollout.teacher_samples} generates with the teacher, which a "
                         "streamed teacher does not do; set rollout.teacher_samples=0 or "
                         "teacher.offload=none")
    if cfg.eval.teacher and cfg.eval.at_start:
        raise ValueError("teacher.offload=stream: eval.teacher=true evaluates the teacher by "
                         "generation, which a streamed teacher does not do; set eval.teacher=false")


def _teacher_parallel(cfg: RunConfig, world_size: int) -> None:
    """teacher.parallel: a teacher on its own layout scores the student's rows
    (models/teacher_layout.py; resident or streamed, after or during the rollout), generates its
    trajectories and sft_distill's traces (rollout/on_layout.py) and evaluates itself; its data-
    parallel ranks must split the rows (and the prompts it generates for) evenly."""
    tp = cfg.teacher.parallel
    tp.validate(cfg.parallel, world_size)
    if not tp.is_own(cfg.parallel):
        return
    mine = tp.resolve(cfg.parallel)
    teacher_dp = world_size // (mine.tensor * mine.pipeline)
    if cfg.algorithm == "sft_distill":  # the teacher's DP ranks split the prompts of its traces
        _raise(data_parallel_problem("train.sft_batch_size", cfg.train.sft_batch_size,
                                     teacher_dp, " of the teacher (teacher.parallel), which "
                                     "generates the traces"))
        return
    r = cfg.rollout
    rows = r.prompts_per_step * (r.group_size + r.teacher_samples)
    _raise(data_parallel_problem("rollout.prompts_per_step * (rollout.group_size + "
                                 "rollout.teacher_samples)", rows, teacher_dp,
                                 " of the teacher (teacher.parallel)"))
    if r.teacher_samples:  # the teacher's DP ranks split the prompts to generate its rows
        _raise(data_parallel_problem("rollout.prompts_per_step", r.prompts_per_step, teacher_dp,
                                     " of the teacher (teacher.parallel), which generates "
                                     "rollout.teacher_samples"))
    if (mine.virtual_pipeline or 1) > 1:
        if cfg.train.max_tokens_per_micro_batch:
            raise ValueError("teacher.parallel.virtual_pipeline: not with "
                             "train.max_tokens_per_micro_batch (see train/step.py "
                             "micro_batch_plan)")
        count = -(-(rows // teacher_dp) // cfg.train.micro_batch_size)
        if count % mine.pipeline:
            raise ValueError(f"teacher.parallel.virtual_pipeline: the teacher's {count} "
                             f"micro-batches per rank (rollout rows / teacher data-parallel "
                             f"size / train.micro_batch_size) must be a multiple of "
                             f"teacher.parallel.pipeline={mine.pipeline}")
