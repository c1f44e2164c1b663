"""A recipe file: the cached preparation stages (tokenizer -> teacher SFT -> student SFT) and the
RL settings every arm of a comparison starts from. `rlad demo` and `rlad reproduce`
(reproduce/runner.py) read it; `rlad prepare RECIPE` runs the preparation stages alone (under
torchrun, every rank):

    torchrun --nproc-per-node 2 -m rlad_megatron.cli prepare examples/configs/reproduce.yaml

Recipe file keys: `cache_dir`, `run_dir`, a `base` RunConfig shared by every stage, one RunConfig
section per stage (`teacher_sft`, `student_sft`, `rl`) merged on top of it, `reproduce` (the
arms, seeds and alphas; reproduce/spec.py ReproduceSpec), `map` (reproduce/grid.py MapSpec), and
`extends: OTHER.yaml` to start from another recipe file (merged key by key, except `reproduce`,
`map` and the dotted keys listed under `replace:`, e.g. `[base.data.task_config]`, which replace
the other's whole). Every section is read through its dataclass schema with config/run.py's
merge (merge_config, merge_schema): unknown keys and wrong types name the key. Overrides are
`STAGE.key=value` (or `base.key=value`, `reproduce.key=value`, `cache_dir=...`, `run_dir=...`).

The tokenizer is a sentencepiece character model trained on the prompts and gold solutions of
every split. A stage is reused when CACHE/STAGE holds a finished checkpoint made from the same
resolved config (recipe_config.yaml); otherwise it is trained again into CACHE/STAGE, a folder
the recipe owns (it holds .rlad_recipe, written before training starts): a non-empty folder there
without it was not made by a recipe and is refused before any work, never deleted.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any, Optional

import torch.distributed as dist

from rlad_megatron.data.formats import get_format
from rlad_megatron.data.tokenizer_train import train_sentencepiece
from rlad_megatron.models import checkpoint as mckpt
from rlad_megatron.runtime import destroy_parallel, init_distributed, print0
from rlad_megatron.config.run import (RunConfig, load_config, load_mapping, merge_config,
                                      same_config, to_yaml)
from rlad_megatron.train.loop import train
from rlad_megatron.config.schema import get, walk
from rlad_megatron.train.setup import load_splits
from rlad_megatron.config.validate import validate_run_config

STAGES = ("teacher_sft", "student_sft", "rl")
PREP_STAGES = (("teacher_sft", "teacher"), ("student_sft", "student"))
MARKER = "recipe_config.yaml"
"""Written when a stage has finished: its resolved config (the cache key)."""
OWNER = ".rlad_recipe"
"""Written before a stage trains: the folder is the recipe's to replace."""


def split_overrides(overrides: list[str], settings: dict,
                    sections: tuple[str, ...]) -> dict[str, list[str]]:
    """'STAGE.key=value' -> {STAGE: ['key=value']}; top-level `settings` keys are set in place."""
    by_section: dict[str, list[str]] = {s: [] for s in sections}
    for item in overrides:
        key, _, value = item.partition("=")
        head, _, rest = key.partition(".")
        if key in settings and value:
            settings[key] = value
        elif head in by_section and rest and value:
            by_section[head].append(f"{rest}={value}")
        else:
            raise ValueError(f"override {item!r}: expected SECTION.key=value with SECTION one of "
                             f"{', '.join(sections)} (or cache_dir=..., run_dir=...)")
    return by_section


def load_recipe(path: str, overrides: list[str]) -> tuple[dict, dict[str, RunConfig], Any]:
    """-> (settings {cache_dir, run_dir}, {stage: RunConfig}, the `reproduce` section as an
    omegaconf node with its overrides merged, or None); errors name the file and key."""
    from omegaconf import OmegaConf

    raw = _load_with_parent(Path(path))
    unknown = set(raw) - {"cache_dir", "run_dir", "base", "reproduce", "map", *STAGES}
    if unknown:
        raise ValueError(f"{path}: unknown top-level key(s) {sorted(unknown)}; expected "
                         f"cache_dir, run_dir, base, {', '.join(STAGES)}, reproduce, map "
                         f"(reproduce/grid.py)")
    settings = {"cache_dir": str(raw.get("cache_dir", ".cache/rlad_demo")),
                "run_dir": str(raw.get("run_dir", "runs/demo"))}
    by = split_overrides(overrides, settings, ("base", *STAGES, "reproduce"))
    configs = {stage: merge_config(raw.get("base", {}), by["base"], raw.get(stage, {}),
                                   by[stage], where=f"{path}: stage {stage}")
               for stage in STAGES}
    repro = raw.get("reproduce")
    if repro is not None or by["reproduce"]:
        repro = OmegaConf.merge(repro or {}, OmegaConf.from_dotlist(by["reproduce"]))
    return settings, configs, repro


def raw_section(path: str, key: str) -> Any:
    """A top-level section of the recipe (with its `extends` parents) as a plain dict, or None."""
    from omegaconf import OmegaConf

    raw = _load_with_parent(Path(path))
    node = raw.get(key)
    return OmegaConf.to_container(node, resolve=True) if node is not None else None


def _load_with_parent(path: Path, depth: int = 0):
    """The recipe file merged over the file its `extends:` key names (relative to it)."""
    from omegaconf import OmegaConf

    if not path.is_file():
        raise FileNotFoundError(f"recipe file {path} does not exist")
    if depth > 4:
        raise ValueError(f"{path}: `extends` nests more than 4 files deep")
    raw = load_mapping(str(path))
    parent = raw.pop("extends", None)
    replace = list(raw.pop("replace", None) or [])
    if parent is None:
        return raw
    base = _load_with_parent(path.parent / str(parent), depth + 1)
    for key in ["reproduce", "map", *replace]:  # replaced whole, not merged key by key
        head, _, leaf = str(key).rpartition(".")
        node = OmegaConf.select(base, head) if head else base
        if node is not None and leaf in node and OmegaConf.select(raw, str(key)) is not None:
            node.pop(leaf)
    return OmegaConf.merge(base, raw)


def build_tokenizer(cfg: RunConfig, cache: Path) -> Path:
    """Character sentencepiece model over every split's prompts and solutions (rank 0)."""
    path = cache / "tokenizer.model"
    if dist.get_rank() == 0 and not path.exists():
        fmt = get_format(cfg.data.format)
        splits = load_splits(cfg)
        items = splits.train + splits.validation + splits.heldout
        train_sentencepiece([fmt.prompt(i) + fmt.solution(i) for i in items],
                            path.with_suffix(""))
    dist.barrier()
    return path


def cache_relative(cfg: RunConfig) -> RunConfig:
    """A copy of a stage's config with every path inside its cache folder (the parent of its
    run_dir: the run_dir itself, the shared tokenizer) written relative to it, so that the cache
    key does not depend on where the cache is nor on how its path is written (relative,
    absolute, moved or copied)."""
    out = copy.deepcopy(cfg)
    cache = Path(cfg.run_dir).parent
    for info in walk(type(cfg)):
        value = None if info.section else get(out, info.key)
        if not isinstance(value, str):
            continue
        try:
            rel = Path(value).relative_to(cache)
        except ValueError:
            continue
        *parents, leaf = info.key.split(".")
        setattr(get(out, ".".join(parents)) if parents else out, leaf, f"$CACHE/{rel}")
    return out


def stage_finished(folder: Path, cfg: RunConfig) -> bool:
    """A finished stage made from the same config. The marker is read back through the schema
    (load_config), so a field added to RunConfig since, at its default, keeps the stage; paths
    are compared relative to the cache folder (cache_relative)."""
    root = folder / "checkpoints"
    return (root.exists() and same_config(folder / MARKER, cfg, view=cache_relative)
            and mckpt.latest_iteration(root) == cfg.train.steps)


def _why_not_reused(folder: Path, cfg: RunConfig) -> str:
    """Why a cached stage is trained again, in words (the keys that differ, at most 5)."""
    if not (folder / MARKER).is_file():
        return "no finished stage there"
    try:
        old = cache_relative(load_config(str(folder / MARKER)))
    except ValueError as e:
        return f"its recorded config no longer loads ({e})"
    new = cache_relative(cfg)
    keys = [i.key for i in walk(type(cfg)) if not i.section and get(old, i.key) != get(new, i.key)]
    if not keys:
        return f"its checkpoint did not reach train.steps = {cfg.train.steps}"
    return "its config differs in " + ", ".join(
        f"{k} ({get(old, k)!r} -> {get(new, k)!r})" for k in keys[:5])


def owned_or_absent(folder: Path) -> None:
    """Refuse to replace a folder that this recipe did not make (it holds no OWNER file)."""
    if folder.is_file() or (folder.exists() and any(folder.iterdir())
                            and not (folder / OWNER).exists()):
        raise ValueError(f"{folder} exists and was not made by a recipe (no {OWNER}); "
                         f"choose another cache_dir or move it away")


def run_stage(name: str, cfg: RunConfig, folder: Path) -> Optional[dict]:
    """Train a cached stage unless an identical finished one exists; returns its summary."""
    if stage_finished(folder, cfg):
        print0(f"recipe: {name}: reusing {folder}")
        return None
    if folder.exists():
        print0(f"recipe: {name}: not reusing {folder}: {_why_not_reused(folder, cfg)}")
    if dist.get_rank() == 0 and folder.exists():
        shutil.rmtree(folder)  # owned: prepare() checked the OWNER file before any work
    if dist.get_rank() == 0:
        folder.mkdir(parents=True)
        (folder / OWNER).write_text("made by an rlad recipe stage; replaced when its config "
                                    "changes\n")
    dist.barrier()
    print0(f"recipe: {name}: training ({cfg.algorithm}, {cfg.train.steps} steps) into {folder}")
    summary = train(cfg)
    destroy_parallel()
    if dist.get_rank() == 0:
        (folder / MARKER).write_text(to_yaml(cfg))
    dist.barrier()
    return summary


def stage_configs(settings: dict, configs: dict[str, RunConfig]) -> dict[str, RunConfig]:
    """The preparation stages' RunConfigs with their cache folders and the shared tokenizer."""
    cache = Path(settings["cache_dir"])
    out = {}
    for stage, role in PREP_STAGES:
        cfg = configs[stage]
        cfg.algorithm, cfg.run_dir = "sft", str(cache / role)
        cfg.student.tokenizer, cfg.student.random_init = str(cache / "tokenizer.model"), True
        out[stage] = cfg
    return out


def prepare(path: str, overrides: list[str]) -> dict:
    """Tokenizer, teacher and student (each cached); every rank calls it under torchrun."""
    settings, configs, _ = load_recipe(path, overrides)
    stages = stage_configs(settings, configs)
    cache = Path(settings["cache_dir"])
    for _, role in PREP_STAGES:
        owned_or_absent(cache / role)
    env = init_distributed()
    for name, cfg in stages.items():  # every stage checked before the first one trains
        try:
            validate_run_config(cfg, env.world_size, check_files=False)
        except ValueError as e:
            raise ValueError(f"stage {name}: {e}") from None
    build_tokenizer(stages["teacher_sft"], cache)
    return {stage: run_stage(stage, cfg, cache / role)
            for (stage, role), cfg in zip(PREP_STAGES, stages.values())}


def rl_config(settings: dict, configs: dict[str, RunConfig], run_dir: str) -> RunConfig:
    """The `rl` stage's RunConfig pointed at the prepared teacher, student and tokenizer."""
    cache = Path(settings["cache_dir"])
    rl = configs["rl"]
    rl.run_dir = run_dir
    rl.student.checkpoint = str(cache / "student" / "checkpoints")
    rl.teacher.checkpoint = str(cache / "teacher" / "checkpoints")
    rl.student.tokenizer = rl.teacher.tokenizer = str(cache / "tokenizer.model")
    rl.student.spec = {**configs["student_sft"].student.spec, **rl.student.spec}
    rl.teacher.spec = {**configs["teacher_sft"].student.spec, **rl.teacher.spec}
    rl.student.preset = rl.student.preset or configs["student_sft"].student.preset
    rl.teacher.preset = rl.teacher.preset or configs["teacher_sft"].student.preset
    return rl
