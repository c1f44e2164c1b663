"""What a reproduction runs: the `reproduce` section of a recipe file (reproduce/recipe.py) turned
into one job per (arm, seed), each a complete RunConfig.

    reproduce:
      seeds: [1, 2, 3]          # run seeds: rollouts and prompt order (cfg.seed)
      baseline: grpo            # paired differences are taken against this arm
      jobs: 0                   # arms trained at once (each a process group of its own);
                                #   0: one per `procs` cores this process may run on
      procs: 1                  # processes per arm (torchrun --nproc-per-node)
      prepare_procs: 2          # processes of the preparation stages
      arms:                     # name -> RunConfig overrides on top of the `rl` stage
        grpo: {algorithm: grpo}
        rlad: {algorithm: rlad}
      alphas: [0.1, 0.3, 0.7]   # Table 5: extra RLAD arms "rlad_a0.1", ... (the `rlad` arm
                                #   is the alpha ablation's own value, loss.trrd.alpha)
      validation: false         # evaluate on the validation split (for choosing settings)
      quick: {seeds: [1], arms: [grpo, rlad], alphas: [], rl: {train.steps: 30}}
      headline: [docs/results/x/results.json]   # committed results, a sentence each

Every job of one seed has the same cfg.seed, so the arms of a seed draw the same prompts per
step; every job has the same eval.* (split, prompts, sampling seed), so evaluations are paired.
All jobs start from the same student, so its step-0 evaluation (and the teacher's) is run once,
by the first job that loads a teacher, and shared by every curve.
Arm names are folder names: letters, digits, '.', '_' and '-'.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from rlad_megatron.config.active import reset_inactive
from rlad_megatron.reproduce.headline import headline
from rlad_megatron.config.run import ALGORITHMS, RunConfig, merge_config, merge_schema, to_yaml

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass
class QuickSection:
    """`reproduce.quick`: what `--quick` changes (a shorter run of some arms); an unset field
    keeps the full run's."""

    seeds: Optional[List[int]] = None
    """The quick run's seeds."""
    arms: Optional[List[str]] = None
    """The arms it runs, names of reproduce.arms."""
    alphas: Optional[List[float]] = None
    """Its alpha ablation arms ([]: none)."""
    jobs: Optional[int] = None
    """Its arms trained at once (0: one per `procs` available cores)."""
    rl: Dict[str, Any] = field(default_factory=dict)
    """RunConfig overrides of the rl stage, nested or dotted ({train.steps: 30})."""


@dataclass
class ReproduceSpec:
    """The `reproduce` section of a recipe (module docstring), read through this schema like the
    stages through RunConfig's (config/run.py merge_schema: unknown keys and wrong types are
    refused with the key named). parse_spec applies `quick` when asked and keeps of it only the
    rl overrides it applies (`rl_overrides`)."""

    seeds: List[int] = field(default_factory=lambda: [1, 2, 3])
    """Run seeds (cfg.seed): every arm of a seed draws the same prompts per step."""
    baseline: str = "grpo"
    """The arm paired differences are taken against."""
    jobs: int = 0
    """Arms trained at once, each a process group of its own; 0: as many as the cores this
    process may run on hold (os.sched_getaffinity, so a Slurm or taskset allotment counts, not
    the whole machine) divided by `procs`, at least 1: 2 on this project's 2-core machine, more
    on larger ones. Runs are independent processes: their number changes the wall time, never
    the numbers."""
    procs: int = 1
    """Processes per arm (torchrun --nproc-per-node)."""
    prepare_procs: int = 2
    """Processes of the preparation stages."""
    arms: Dict[str, Any] = field(default_factory=dict)
    """Arm name -> RunConfig overrides (a nested mapping, or null) on top of the rl stage."""
    alphas: List[float] = field(default_factory=list)
    """Table 5: extra RLAD arms rlad_a<alpha> that change the rlad arm's loss.trrd.alpha."""
    validation: bool = False
    """Evaluate on the validation split (for choosing settings)."""
    quick: QuickSection = field(default_factory=QuickSection)
    """What --quick changes."""
    headline: List[str] = field(default_factory=list)
    """Committed results (a reproduction's results.json, a map's map.json), each printed as one
    sentence after this run's tables (reproduce/headline.py): the demo's few steps beside the
    full measurement. A file not there yet prints "not measured yet"."""

    @property
    def arm_names(self) -> list[str]:
        return list(self.arms) + [alpha_arm(a) for a in self.alphas]

    @property
    def rl_overrides(self) -> list[str]:
        """Dotted overrides of the rl stage (from reproduce.quick.rl, when --quick applied it)."""
        return dotted_overrides(self.quick.rl)


def alpha_arm(alpha: float) -> str:
    return f"rlad_a{alpha:g}"


def parse_spec(node: Any, *, quick: bool = False, jobs: Optional[int] = None,
               where: str = "reproduce") -> ReproduceSpec:
    """The `reproduce` omegaconf node (or None) -> ReproduceSpec, with `quick` applied and then
    `jobs` (the command line's --jobs, over the recipe's and its quick section's); errors name
    the key."""
    spec = merge_schema(ReproduceSpec, node, where=where)
    for name, over in spec.arms.items():
        if not isinstance(over, (dict, type(None))):
            raise ValueError(f"{where}.arms.{name}: {over!r} is not a mapping of RunConfig "
                             "overrides")
    spec.arms = {name: over or {} for name, over in spec.arms.items()}
    q = spec.quick
    if not quick:
        spec.quick = QuickSection()
    else:
        if q.arms is not None:
            missing = [a for a in q.arms if a not in spec.arms]
            if missing:
                raise ValueError(f"{where}.quick.arms: {missing} are not in {where}.arms "
                                 f"({', '.join(spec.arms)})")
        spec = dataclasses.replace(
            spec, arms={a: spec.arms[a] for a in q.arms} if q.arms is not None else spec.arms,
            seeds=q.seeds if q.seeds is not None else spec.seeds,
            jobs=q.jobs if q.jobs is not None else spec.jobs,
            alphas=q.alphas if q.alphas is not None else spec.alphas, quick=QuickSection(rl=q.rl))
    if jobs is not None:
        spec.jobs = jobs
    _check(spec, where)
    if spec.jobs == 0:
        spec.jobs = jobs_for_cores(spec.procs)
    return spec


def jobs_for_cores(procs: int) -> int:
    """Arms that fit at once on the cores this process may run on, `procs` processes each."""
    return max(1, len(os.sched_getaffinity(0)) // procs)


def dotted_overrides(d: dict) -> list[str]:
    """A nested mapping of recipe or config keys as key=value overrides ({rl: {train.steps: 3}}
    -> ["rl.train.steps=3"])."""
    return [f"{k}={v}" for k, v in _flatten(d).items()]


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _check(spec: ReproduceSpec, where: str) -> None:
    if not spec.arms:
        raise ValueError(f"{where}.arms: no arms to run")
    if not spec.seeds or len(set(spec.seeds)) != len(spec.seeds) or min(spec.seeds) < 0:
        raise ValueError(f"{where}.seeds: {spec.seeds} must be distinct integers >= 0")
    if spec.jobs < 0:
        raise ValueError(f"{where}.jobs (or --jobs): {spec.jobs!r} must be an integer >= 1, or "
                         "0 for one arm per `procs` available cores")
    for key, value in (("procs", spec.procs), ("prepare_procs", spec.prepare_procs)):
        if value < 1:
            raise ValueError(f"{where}.{key}: {value!r} must be an integer >= 1")
    for name in spec.arm_names:
        if not _NAME.fullmatch(name):
            raise ValueError(f"{where}.arms: {name!r} is not a usable arm name (letters, digits, "
                             f"'.', '_', '-')")
    if len(set(spec.arm_names)) != len(spec.arm_names):
        raise ValueError(f"{where}: arm names repeat: {spec.arm_names}")
    if spec.baseline not in spec.arms:
        raise ValueError(f"{where}.baseline: {spec.baseline!r} is not one of the arms "
                         f"({', '.join(spec.arms)})")
    if spec.alphas and "rlad" not in spec.arms:
        raise ValueError(f"{where}.alphas: the alpha ablation varies the 'rlad' arm, which "
                         f"{where}.arms does not have")
    for a in spec.alphas:
        if not 0 <= a <= 1:
            raise ValueError(f"{where}.alphas: {a} is outside [0, 1]")
    for path in spec.headline:  # a committed file of the wrong kind is refused before any work
        headline(path)


@dataclass
class Job:
    arm: str
    seed: int
    cfg: RunConfig

    @property
    def run_dir(self) -> Path:
        return Path(self.cfg.run_dir)

    @property
    def config_yaml(self) -> str:
        return to_yaml(self.cfg)


def arm_overrides(spec: ReproduceSpec, arm: str) -> dict:
    if arm in spec.arms:
        return spec.arms[arm]
    alpha = next(a for a in spec.alphas if alpha_arm(a) == arm)
    return {**spec.arms["rlad"], "loss": {"trrd": {"alpha": alpha}}}


def build_jobs(spec: ReproduceSpec, rl: RunConfig, run_dir: Path,
               where: str = "reproduce") -> list[Job]:
    """One Job per (arm, seed): the rl stage + the arm's overrides + seed, eval split and
    run_dir. The rl stage is shared by arms of different algorithms: the options of its sections
    an arm does not use (loss.kdrl.* in a grpo arm, config/active.py) are reset to their defaults,
    unless the arm sets them itself (then validation refuses them)."""
    jobs = []
    for arm in spec.arm_names:
        for seed in spec.seeds:
            own = arm_overrides(spec, arm)
            cfg = merge_config(list(spec.rl_overrides), own, base=rl, where=f"{where}.arms.{arm}")
            cfg = reset_inactive(cfg, keep=set(_flatten(own)))
            if cfg.algorithm not in ALGORITHMS:
                raise ValueError(f"{where}.arms.{arm}.algorithm: {cfg.algorithm!r} is not one "
                                 f"of {', '.join(ALGORITHMS)}")
            cfg.seed = seed
            cfg.run_dir = str(run_dir / "arms" / arm / f"seed_{seed}")
            if spec.validation:
                cfg.eval.split = "validation"
            jobs.append(Job(arm, seed, cfg))
    # every job starts from the same student and evaluates it with the same prompts and seed:
    # the step-0 evaluation (and the teacher's) is run once, by the first job that has a teacher
    first = next((j for j in jobs if j.cfg.needs_teacher), jobs[0])
    for job in jobs:  # a user's eval.at_start=false or eval.teacher=false stays
        job.cfg.eval.at_start = job.cfg.eval.at_start and job is first
        job.cfg.eval.teacher = job.cfg.eval.teacher and job is first
    return jobs


def arm_label(spec: ReproduceSpec, arm: str, jobs: list[Job]) -> str:
    """A readable row name: 'RLAD (alpha 0.5)', 'GRPO', 'SFT (teacher traces)'; an arm whose
    name is not its algorithm's (e.g. a learning-rate variant) keeps its name in brackets."""
    cfg = next(j.cfg for j in jobs if j.arm == arm)
    if cfg.algorithm == "rlad":
        label = f"RLAD (alpha {cfg.loss.trrd.alpha:g})"
    elif cfg.algorithm == "kdrl":
        label = f"KDRL (beta {cfg.loss.kdrl.beta_init:g})"
    elif cfg.algorithm == "sft_distill":
        label = "SFT (rejection-sampled teacher traces)"
    else:
        label = {"grpo": "GRPO", "sft": "SFT (gold)"}.get(cfg.algorithm, arm)
    usual = {"rlad": "rlad", "kdrl": "kdrl", "sft_distill": "sft", "grpo": "grpo"}
    if cfg.uses_trajectories:
        im = cfg.imitation
        off = [name for name, on in (("aligned", im.gate_aligned), ("advantage", im.gate_advantage),
                                     ("explore", im.gate_explore)) if not on]
        label += " + teacher trajectories" + (f" (no {', no '.join(off)} gate)" if off else "")
    if arm != usual.get(cfg.algorithm) and not (cfg.algorithm == "rlad" and arm in
                                                 [alpha_arm(a) for a in spec.alphas]):
        label += f" [{arm}]"
    return label
