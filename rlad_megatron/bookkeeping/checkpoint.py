"""The trainer's checkpoint: the student's model, optimizer, LR scheduler, RNG states, data
position and step, in Megatron's layout (models/checkpoint.py: ROOT/iter_0000100/ and
ROOT/latest_checkpointed_iteration.txt), written atomically, keep-last-N.

Named parts of the state dict:
    model / model0..   the student's sharded tensors (any TP/PP/VPP can load them)
    optimizer          megatron's sharded optimizer state (resharded on load)
    scheduler          OptimizerParamScheduler.state_dict()          (common, rank 0)
    train_state        {"step", "data": PromptSampler state, ...}      (common, rank 0)
    rank_state_RRRRR.pt  per rank: torch/numpy/python RNG and megatron's model-parallel RNG
                       tracker as tensors and plain data, read with weights_only=True (nothing
                       in it can run code); restored only when the layout (TP, PP, DP) is the
                       same, otherwise re-seeded from (seed, step) with a warning.
The teacher is never part of it. A Megatron checkpoint that holds only a model (from
`rlad convert import` or `rlad sft`) is read by models/checkpoint.py `load_model`.
"""

from __future__ import annotations

import logging
import pickle
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist

from rlad_megatron.models import checkpoint as mckpt
from rlad_megatron.models.build import Student
from rlad_megatron.runtime.cpu_shims import cuda_to_cpu

log = logging.getLogger("rlad_megatron.checkpoint")


@dataclass
class TrainState:
    step: int = 0
    data: dict = field(default_factory=dict)
    bad_steps: int = 0


def _rng_state() -> dict:
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(),
             "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
             "python": random.getstate(), "tracker": get_cuda_rng_tracker().get_states()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])
    get_cuda_rng_tracker().set_states(state["tracker"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _layout(student: Student) -> dict:
    p = student.par
    return {"tp": p.tp, "pp": p.pp, "vpp": p.vpp, "dp": p.dp, "world": dist.get_world_size()}


def _sharded(student: Student, scheduler, state: Optional[TrainState], *, loading: bool) -> dict:
    model_sd = mckpt.model_sharded_state_dict(student.chunks)
    with cuda_to_cpu():
        opt_sd = student.optimizer.sharded_state_dict(model_sd, is_loading=loading)
    out = {**model_sd, "optimizer": opt_sd}
    if not loading:
        out["scheduler"] = scheduler.state_dict()
        out["train_state"] = asdict(state)
    return out


def save_train_checkpoint(root: str | Path, student: Student, scheduler, state: TrainState, *,
                          keep_last: int, config_yaml: str, meta: Optional[dict] = None) -> Path:
    """Collective: save everything needed to resume at `state.step`."""
    return mckpt.save(root, state.step, _sharded(student, scheduler, state, loading=False),
                      spec=student.spec, keep_last=keep_last,
                      meta={"layout": _layout(student), "kind": "train", **(meta or {})},
                      files={"run_config.yaml": config_yaml}, rank_payload=_rng_state())


def load_train_checkpoint(root: str | Path, student: Student, scheduler,
                          iteration: Optional[int] = None) -> TrainState:
    """Collective: restore model, optimizer, scheduler, data position, step (and RNG when the
    layout matches)."""
    from megatron.core import dist_checkpointing
    from torch.distributed.checkpoint.api import CheckpointException

    folder = mckpt.resolve(root, iteration)
    meta = mckpt.read_model_meta(folder)
    if meta.get("kind") != "train":
        raise ValueError(f"{folder} is a model-only checkpoint (no optimizer/train state); load it "
                         "as student.checkpoint instead of resuming from it")
    try:
        common = dist_checkpointing.load_common_state_dict(str(folder))
        loaded = mckpt.load(folder, _sharded(student, None, None, loading=True))
    except (EOFError, RuntimeError, OSError, pickle.UnpicklingError, CheckpointException) as e:
        # torch's CheckpointException derives from BaseException: named here, not a traceback
        # the sizes verified, the contents did not: name the folder instead of a bare traceback
        raise ValueError(f"checkpoint {folder} could not be read ({_cause(e)}); resume from "
                         f"an earlier iteration "
                         f"(remove or move this one) or set checkpoint.resume=false") from None
    modules = student.modules
    for i, module in enumerate(modules):
        module.load_state_dict(loaded[mckpt.model_state_key(i, len(modules))], strict=True)
    with cuda_to_cpu(), torch.no_grad():
        student.optimizer.load_state_dict(loaded["optimizer"])
    scheduler.load_state_dict(common["scheduler"])
    state = TrainState(**common["train_state"])
    payload = folder / mckpt.rank_payload_name(dist.get_rank())
    rng = read_rank_state(payload) if meta.get("layout") == _layout(student) else None
    if rng is not None:
        _set_rng_state(rng)
    else:
        log.warning("resuming %s at another layout (%s, saved %s): RNG states are re-seeded",
                    folder, _layout(student), meta.get("layout"))
    return state


def _cause(e: BaseException) -> str:
    """The error in one line; for torch's CheckpointException (whose text is every rank's
    traceback) the first rank's own error."""
    failures = getattr(e, "failures", None)
    if isinstance(failures, dict) and failures:
        inner = next(iter(failures.values()))
        e = inner[0] if isinstance(inner, tuple) else inner
    return f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"


RUN_IDENTITY = ("algorithm", "seed", "student.preset", "student.spec", "teacher.preset",
                "teacher.spec", "data.source", "data.task", "data.task_config", "data.levels",
                "data.format", "data.seed")
"""What makes a checkpoint this run's: a resume that differs in any of them is refused unless
checkpoint.resume_other_run is set (learning rate, steps, logging may change on resume)."""


def resume_iteration(root: str | Path, fallback: bool = True,
                     checksums: bool = True) -> Optional[int]:
    """The iteration to resume from: the pointer's, when it verifies (models/checkpoint.py
    `verify`); else, with `fallback`, the newest saved iteration that verifies (saying which and
    why, as a warning); None when `root` holds no checkpoint. ValueError naming the file when the
    latest is corrupt or incomplete and fallback is off, or when no iteration verifies."""
    root = Path(root)
    saved = mckpt.saved_iterations(root)
    if not saved and not (root / mckpt.POINTER).exists():
        return None
    problems = []
    try:
        latest = mckpt.latest_iteration(root)
    except ValueError as e:
        latest = None
        problems.append(str(e))
    order = ([latest] if latest is not None else []) + [i for i in reversed(saved) if i != latest]
    for iteration in order:
        problem = mckpt.verify(mckpt.iter_dir(root, iteration), checksums=checksums)
        if problem is None:
            if problems:
                log.warning("checkpoint: %s; falling back to iteration %d (checkpoint.fallback)",
                            "; ".join(problems), iteration)
            return iteration
        problems.append(f"iteration {iteration}: {problem}")
        if not fallback:
            break
    if not fallback and problems:
        raise ValueError(f"checkpoint.dir {root}: the latest checkpoint is corrupt or incomplete: "
                         f"{problems[0]}. Set checkpoint.fallback=true to resume from the newest "
                         f"iteration that verifies, or checkpoint.resume=false to start over")
    raise ValueError(f"checkpoint.dir {root}: no iteration verifies: " + "; ".join(problems))


def check_run_identity(root: str | Path, config_yaml: str, allow_other: bool = False,
                       iteration: Optional[int] = None) -> None:
    """Compare a checkpoint's run_config.yaml under `root` (the latest, or `iteration`) with this
    run's resolved config (YAML) on RUN_IDENTITY; raise ValueError naming the differing keys and
    both values."""
    import yaml

    folder = mckpt.resolve(root, iteration)
    saved_file = folder / "run_config.yaml"
    if not saved_file.exists():
        raise ValueError(f"{folder} has no run_config.yaml: it is not a training checkpoint of "
                         f"rlad train; set checkpoint.dir to a new folder")
    saved, now = yaml.safe_load(saved_file.read_text()), yaml.safe_load(config_yaml)

    def get(d, dotted):
        for part in dotted.split("."):
            d = d.get(part) if isinstance(d, dict) else None
        return d

    from rlad_megatron.config.run import NEEDS_TEACHER

    def has_teacher(d: dict) -> bool:
        return d.get("algorithm") in NEEDS_TEACHER or bool(get(d, "rollout.teacher_samples"))

    # the teacher is part of the identity only when one of the two runs has a teacher
    keys = [k for k in RUN_IDENTITY if not k.startswith("teacher.")
            or has_teacher(saved) or has_teacher(now)]
    differ = [f"{k}: checkpoint {get(saved, k)!r}, this run {get(now, k)!r}" for k in keys
              if get(saved, k) != get(now, k)]
    if differ and not allow_other:
        raise ValueError(f"checkpoint.dir {root} holds another run ({folder.name}): "
                         + "; ".join(differ) + ". Use a new run_dir / checkpoint.dir, or set "
                         "checkpoint.resume_other_run=true to resume it anyway")
    if differ:
        log.warning("resuming another run's checkpoint %s: %s", folder, "; ".join(differ))


def read_rank_state(path: Path) -> Optional[dict]:
    """The per-rank RNG state, loaded without unpickling arbitrary objects (weights_only: only
    tensors and plain Python data are accepted). None, with a warning, when the file is missing
    or holds anything else (a file from an older version, or one planted to run code)."""
    if not path.exists():
        return None
    try:
        return torch.load(path, weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises UnpicklingError, RuntimeError, EOFError
        log.warning("%s is not a plain RNG state (%s: %s); RNG states are re-seeded",
                    path, type(e).__name__, str(e).splitlines()[0][:200])
        return None

