"""Build everything a run needs from its RunConfig, in order, before the first step:
processes and parallel state, tokenizer(s), student and teacher, LR schedule, prompts, reward,
logging, and the resume point. Each part is one function; the loop (train/loop.py) only uses the
resulting `Run` (train/run.py).

Every user error is raised here, before any work: bad config values (config/validate.py
validate_run_config), missing files, tokenizers that disagree, layouts that cannot hold the models
(models/config.py).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Optional

import torch.distributed as dist

from rlad_megatron.convert.init_weights import random_hf_weights
from rlad_megatron.convert.layout import load_hf_tensors
from rlad_megatron.data.formats import PromptFormat, encode_prompt, get_format
from rlad_megatron.data.rewards import get_reward
from rlad_megatron.data.sampler import PromptSampler
from rlad_megatron.data.tasks import PromptSplits, file_splits, reasoning_gym_splits
from rlad_megatron.data.tokenizer import Tokenizer, check_same_vocab, load_tokenizer
from rlad_megatron.models import checkpoint as mckpt
from rlad_megatron.models.build import (BuiltModel, Student, build_student,
                                        build_teacher, memory_report)
from rlad_megatron.models.spec import ModelSpec, get_preset
from rlad_megatron.models.teacher_stream import stream_teacher
from rlad_megatron.runtime import (DistEnv, agree_or_raise, init_distributed,
                                   init_parallel, print0)
from rlad_megatron.runtime.teacher_parallel import init_teacher_parallel
from rlad_megatron.bookkeeping import checkpoint as tckpt
from rlad_megatron.models.reference import ReferenceWeights
from rlad_megatron.config.run import ModelConfig, RunConfig, to_yaml
from rlad_megatron.bookkeeping.metrics import open_metrics
from rlad_megatron.bookkeeping.run_lock import RunLocks
from rlad_megatron.train.run import Run
from rlad_megatron.train.teacher_scoring import teacher_scorer
from rlad_megatron.bookkeeping.timers import PhaseTimer
from rlad_megatron.config.validate import validate_run_config

log = logging.getLogger("rlad_megatron.setup")


def resolve_spec(m: ModelConfig, role: str, tokenizer: Optional[Tokenizer] = None) -> ModelSpec:
    """preset (+ spec overrides), or spec alone, or the checkpoint's recorded spec.
    `vocab_size: 0` in the spec means the tokenizer's size."""
    fields = dict(m.spec)
    if fields.get("vocab_size") == 0 and tokenizer is not None:
        fields["vocab_size"] = tokenizer.vocab_size
    if m.preset:
        spec = get_preset(m.preset, **fields)
    elif m.checkpoint and not fields.get("arch"):
        spec = dataclasses.replace(mckpt.read_spec(m.checkpoint), **fields)
    else:
        spec = ModelSpec.from_dict(fields, prefix=f"{role}.spec")
    spec.validate(prefix=role)
    if m.checkpoint:
        check_spec_matches_checkpoint(spec, m.checkpoint, role)
    return spec


SHAPE_FIELDS = ("arch", "num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads",
                "num_query_groups", "vocab_size", "kv_channels", "tie_embeddings", "qkv_bias",
                "qk_layernorm")
"""ModelSpec fields that decide the weights' names and shapes (the rest, e.g. rotary_base or
max_position_embeddings, may differ from the checkpoint's on purpose)."""


def check_spec_matches_checkpoint(spec: ModelSpec, checkpoint: str, role: str) -> None:
    """The configured architecture against the checkpoint's recorded one (rlad_model.json), before
    any model is built: a mismatch is named with the role, the path and the fields, instead of
    megatron's "Global shape mismatch" after both models are built. Checkpoints without a
    recorded spec are left to the load."""
    try:
        saved = mckpt.read_spec(checkpoint)
    except FileNotFoundError:
        return
    mine, theirs = spec.to_dict(), saved.to_dict()
    for d in (mine, theirs):  # None means hidden_size // num_attention_heads
        d["kv_channels"] = d["kv_channels"] or d["hidden_size"] // d["num_attention_heads"]
    differ = [f"{k}: configured {mine.get(k)!r}, checkpoint {theirs.get(k)!r}"
              for k in SHAPE_FIELDS if mine.get(k) != theirs.get(k)]
    if differ:
        raise ValueError(f"{role}: the configured architecture does not match {role}.checkpoint "
                         f"{checkpoint}: " + "; ".join(differ) + f". Drop {role}.preset/"
                         f"{role}.spec to use the checkpoint's own")


def tokenizer_path(m: ModelConfig, role: str) -> str:
    if m.tokenizer:
        return m.tokenizer
    path = mckpt.recorded_tokenizer(m.checkpoint)  # its own copy first (convert import's)
    if path is None:
        raise ValueError(f"{role}.tokenizer is not set and {m.checkpoint} records no tokenizer")
    return str(path)


def load_tokenizers(cfg: RunConfig, teacher_needed: bool) -> Tokenizer:
    tok = load_tokenizer(tokenizer_path(cfg.student, "student"))
    if teacher_needed:
        t_path = tokenizer_path(cfg.teacher, "teacher")
        if Path(t_path).resolve() != Path(tokenizer_path(cfg.student, "student")).resolve():
            check_same_vocab(load_tokenizer(t_path), tok, label_a=f"teacher ({t_path})",
                             label_b=f"student ({tokenizer_path(cfg.student, 'student')})")
    return tok


def check_vocab_fits(spec: ModelSpec, tok: Tokenizer, role: str) -> None:
    if tok.vocab_size > spec.vocab_size:
        raise ValueError(f"{role}.vocab_size: {spec.vocab_size} is smaller than the tokenizer's "
                         f"{tok.vocab_size} tokens")


def init_weights(model: BuiltModel, m: ModelConfig, seed: int) -> Optional[str]:
    """Load the configured checkpoint, or layout-invariant random weights (random_init)."""
    if m.checkpoint:
        return str(mckpt.load_model(m.checkpoint, model.chunks, par=model.par))
    weights = random_hf_weights(model.spec, seed=seed)
    load_hf_tensors(model.chunks, weights.__getitem__, spec=model.spec, tp=model.par.tp,
                    tp_rank=model.par.tp_rank, padded_vocab=model.padded_vocab_size)
    return None


def build_scheduler(cfg: RunConfig, student: Student):
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    o = cfg.optimizer
    per_step = cfg.train.mini_batches if cfg.is_rl else 1
    total = max(cfg.train.steps * per_step, 1)
    warmup = o.warmup_steps * per_step
    return OptimizerParamScheduler(
        student.optimizer, init_lr=0.0 if warmup else o.lr, max_lr=o.lr, min_lr=o.min_lr,
        lr_warmup_steps=warmup, lr_decay_steps=max(total, warmup + 1),
        lr_decay_style=o.decay_style, start_wd=o.weight_decay, end_wd=o.weight_decay,
        wd_incr_steps=total, wd_incr_style="constant")


def load_splits(cfg: RunConfig) -> PromptSplits:
    d = cfg.data
    if d.source == "reasoning_gym":
        return reasoning_gym_splits(d.task, train_size=d.train_size, heldout_size=d.heldout_size,
                                    validation_size=d.validation_size, seed=d.seed,
                                    config=dict(d.task_config), levels=list(d.levels))
    return file_splits(d.source, heldout_fraction=d.heldout_fraction, seed=d.seed,
                       question_field=d.question_field, answer_field=d.answer_field,
                       answer_format=d.answer_format, task=d.task, on_bad_row=d.on_bad_row)


def check_writable(path: str | Path, key: str) -> None:
    """Create `path` (a folder) if needed and write and remove a probe file in it, so that an
    unusable run_dir or checkpoint.dir is named before any model is built, not at the first
    save after hours of training."""
    folder = Path(path)
    probe = folder / f".rlad_write_probe_{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"{key}: {folder} is not a writable folder ({e.strerror or e})") from None


def drop_long_prompts(cfg: RunConfig, splits: PromptSplits, tok: Tokenizer, fmt: PromptFormat,
                      specs: list[Optional[ModelSpec]]) -> PromptSplits:
    """Every prompt's length plus the tokens generated after it must fit the models' context
    (max_position_embeddings): checked when the data loads, not when a batch happens to hold
    the prompt hours later. An over-long prompt follows data.on_bad_row: "error" names it,
    "skip" drops it and counts it (PromptSplits.too_long)."""
    context = min(s.max_position_embeddings for s in specs if s is not None)
    new = {"train": cfg.rollout.max_new_tokens,
           "eval": cfg.eval.max_new_tokens or cfg.rollout.max_new_tokens}
    kept, dropped = {}, 0
    for split in ("train", "heldout", "validation"):
        limit = context - new["train" if split == "train" else "eval"]
        kept[split] = []
        for item in getattr(splits, split):
            n = len(encode_prompt(fmt, tok, item, cfg.data.system_prompt))
            if n <= limit:
                kept[split].append(item)
            elif cfg.data.on_bad_row == "skip":
                dropped += 1
            else:
                raise ValueError(
                    f"data: a {split} prompt of {n} tokens does not fit the context: {n} + "
                    f"{context - limit} new tokens > max_position_embeddings {context} "
                    f"(question {item.question[:80]!r}); set data.on_bad_row=skip to drop such "
                    f"prompts, or shorten rollout.max_new_tokens / eval.max_new_tokens")
    return dataclasses.replace(splits, **kept, too_long=splits.too_long + dropped)


def check_splits(cfg: RunConfig, splits: PromptSplits) -> None:
    """Say what the data holds and what was dropped; refuse an empty split the run needs."""
    eval_split = splits.validation if cfg.eval.split == "validation" else splits.heldout
    print0(f"rlad: data: {len(splits.train)} train, {len(splits.validation)} validation, "
           f"{len(splits.heldout)} held-out prompts; dropped {splits.duplicates} duplicate(s), "
           f"{splits.bad_rows} bad row(s), {splits.bad_labels} wrong gold label(s), "
           f"{splits.too_long} over-long prompt(s)")
    if not splits.train:
        raise ValueError(f"data: the train split of {cfg.data.source} is empty")
    if not eval_split:
        hint = ("data.heldout_fraction" if cfg.data.source != "reasoning_gym" else
                "data.validation_size" if cfg.eval.split == "validation" else
                "data.heldout_size")
        raise ValueError(f"eval.split: the {cfg.eval.split} split of {cfg.data.source} is empty "
                         f"(see {hint})")


def setup(cfg: RunConfig) -> Run:
    env = init_distributed()
    validate_run_config(cfg, env.world_size)
    error, resume_at, lock = None, None, None
    if env.rank == 0:
        try:
            check_writable(cfg.run_dir, "run_dir")
            check_writable(cfg.checkpoint_dir, "checkpoint.dir")
            # one run per run_dir and per checkpoint.dir
            lock = RunLocks.acquire(cfg.run_dir, cfg.checkpoint_dir)
            # a corrupt latest checkpoint, or one of another run, is found before any model
            if cfg.checkpoint.resume:
                resume_at = tckpt.resume_iteration(cfg.checkpoint_dir, cfg.checkpoint.fallback,
                                                   cfg.checkpoint.verify_checksums)
            if resume_at is not None:
                tckpt.check_run_identity(cfg.checkpoint_dir, to_yaml(cfg),
                                         cfg.checkpoint.resume_other_run, iteration=resume_at)
        except ValueError as e:
            error = str(e)
    try:
        agree_or_raise(error)  # every rank raises the same error, none waits for the others
        return _build(cfg, env, resume_at, lock)
    except BaseException:
        if lock is not None:
            lock.release()
        raise


def _build(cfg: RunConfig, env: DistEnv, resume_at: Optional[int],
           lock: Optional[RunLocks]) -> Run:
    """setup() after the checks that need no model: tokenizers, data, models, resume."""
    shared = [resume_at]
    dist.broadcast_object_list(shared, src=0)
    resume_at = shared[0]
    teacher_needed = cfg.needs_teacher
    tok = load_tokenizers(cfg, teacher_needed)
    student_spec = resolve_spec(cfg.student, "student", tok)
    teacher_spec = resolve_spec(cfg.teacher, "teacher", tok) if teacher_needed else None
    check_vocab_fits(student_spec, tok, "student")
    fmt = get_format(cfg.data.format, check_steps=cfg.data.check_steps,
                     answer_prefill=cfg.data.answer_prefill)
    reward_fn = get_reward(cfg.data.reward)
    splits = load_splits(cfg)
    splits = drop_long_prompts(cfg, splits, tok, fmt, [student_spec, teacher_spec])
    check_splits(cfg, splits)

    par = init_parallel(dataclasses.replace(cfg.parallel, seed=cfg.seed))
    student = build_student(student_spec, par, cfg.optimizer, dtype=cfg.student.dtype)
    teacher = None
    if teacher_needed:
        streamed = cfg.teacher.offload == "stream"
        teacher_par = init_teacher_parallel(cfg.teacher.parallel, cfg.parallel, par)
        teacher = build_teacher(teacher_spec, teacher_par, dtype=cfg.teacher.dtype,
                                student_spec=student_spec, on_host=streamed)
        init_weights(teacher, cfg.teacher, seed=cfg.seed + 1)
        if streamed:  # decoder layers stay in host memory, the rest moves to the device
            teacher = stream_teacher(teacher, window=cfg.teacher.stream_window,
                                     activations=cfg.teacher.stream_activations)
    init_weights(student, cfg.student, seed=cfg.seed)
    # pi_ref: the starting weights, taken before a resume loads the trained ones
    reference = ReferenceWeights.snapshot(student) if cfg.kl_beta else None
    scheduler = build_scheduler(cfg, student)

    run_dir = Path(cfg.run_dir)
    config_yaml = to_yaml(cfg)
    if env.rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(config_yaml)
    dist.barrier()

    state, resumed = tckpt.TrainState(), None
    sampler = PromptSampler(splits.train, seed=cfg.data.seed + cfg.seed)
    ckpt_root = cfg.checkpoint_dir
    if resume_at is not None:
        state = tckpt.load_train_checkpoint(ckpt_root, student, scheduler, iteration=resume_at)
        sampler.load_state_dict(state.data)
        resumed = str(mckpt.resolve(ckpt_root, resume_at))
    run = Run(cfg=cfg, env=env, par=par, tokenizer=tok, student=student, teacher=teacher,
              scheduler=scheduler, splits=splits, sampler=sampler, fmt=fmt, reward_fn=reward_fn,
              metrics=None, timer=PhaseTimer(), state=state, config_yaml=config_yaml,
              resumed_from=resumed, reference=reference, lock=lock)
    run.scorer = teacher_scorer(run)
    run.metrics = open_metrics(
        run_dir, enabled=run.is_logging_rank, tensorboard=cfg.logging.tensorboard,
        wandb_project=cfg.logging.wandb_project, wandb_entity=cfg.logging.wandb_entity,
        config=json.loads(json.dumps(dataclasses.asdict(cfg), default=str)),
        resume=resumed is not None)
    if resumed is not None:
        run.metrics.truncate_from(state.step + 1)
    mem = memory_report(student, teacher)
    print0(f"rlad: {cfg.algorithm} on {par.describe()}, world {env.world_size} ({env.backend}); "
           f"student {student_spec.name or student_spec.arch} {student.parameter_count():,} "
           f"params/rank" + (f", teacher {teacher_spec.name or teacher_spec.arch} "
                             f"{teacher.parameter_count():,} params/rank" if teacher else "")
           + (f" on its own layout {teacher.par.describe()}"
              if teacher is not None and teacher.par.detached else "")
           + "; " + ", ".join(f"{k.split('/')[1]}={v:.1f}MiB" for k, v in mem.items())
           + (f"; resumed from {resumed} at step {state.step}" if resumed else ""))
    return run
