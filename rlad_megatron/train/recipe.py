"""A multi-stage recipe in one launch: tokenizer -> teacher SFT -> student SFT -> RL, with the
first three cached. This is what `make demo` runs (examples/configs/demo.yaml):

    torchrun --nproc-per-node 2 -m rlad_megatron.cli demo examples/configs/demo.yaml \
        rl.train.steps=40 teacher_sft.train.steps=300

Recipe file: `cache_dir`, `run_dir`, a `base` RunConfig shared by every stage, and one RunConfig
section per stage (`teacher_sft`, `student_sft`, `rl`) merged on top of it. Overrides are
`STAGE.key=value` (or `base.key=value`). The tokenizer is a sentencepiece character model trained
on the training split's prompts and gold solutions. A stage is reused when CACHE/STAGE holds a
finished checkpoint made from the same resolved config; otherwise it is trained again.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional

import torch.distributed as dist

from rlad_megatron.data.formats import get_format
from rlad_megatron.data.tokenizer_train import train_sentencepiece
from rlad_megatron.models import checkpoint as mckpt
from rlad_megatron.runtime import destroy_parallel, init_distributed, print0
from rlad_megatron.train.config import RunConfig, to_yaml
from rlad_megatron.train.loop import train
from rlad_megatron.train.setup import load_splits

STAGES = ("teacher_sft", "student_sft", "rl")


def load_recipe(path: str, overrides: list[str]) -> tuple[dict, dict[str, RunConfig]]:
    """-> (recipe settings, {stage: RunConfig}); errors name the file and key."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if not Path(path).is_file():
        raise FileNotFoundError(f"recipe file {path} does not exist")
    raw = OmegaConf.load(path)
    unknown = set(raw) - {"cache_dir", "run_dir", "base", *STAGES}
    if unknown:
        raise ValueError(f"{path}: unknown top-level key(s) {sorted(unknown)}; expected "
                         f"cache_dir, run_dir, base, {', '.join(STAGES)}")
    settings = {"cache_dir": str(raw.get("cache_dir", ".cache/rlad_demo")),
                "run_dir": str(raw.get("run_dir", "runs/demo"))}
    by_stage: dict[str, list[str]] = {s: [] for s in ("base", *STAGES)}
    for item in overrides:
        key, _, value = item.partition("=")
        head, _, rest = key.partition(".")
        if key in settings and value:
            settings[key] = value
        elif head in by_stage and rest and value:
            by_stage[head].append(f"{rest}={value}")
        else:
            raise ValueError(f"override {item!r}: expected STAGE.key=value with STAGE one of "
                             f"base, {', '.join(STAGES)} (or cache_dir=..., run_dir=...)")
    configs = {}
    for stage in STAGES:
        try:
            merged = OmegaConf.merge(OmegaConf.structured(RunConfig), raw.get("base", {}),
                                     OmegaConf.from_dotlist(by_stage["base"]),
                                     raw.get(stage, {}), OmegaConf.from_dotlist(by_stage[stage]))
            configs[stage] = OmegaConf.to_object(merged)
        except OmegaConfBaseException as e:
            raise ValueError(f"{path}: stage {stage}: key {getattr(e, 'full_key', '?')}: "
                             f"{e.msg}") from None
    return settings, configs


def build_tokenizer(cfg: RunConfig, cache: Path) -> Path:
    """Character sentencepiece model over the train split's prompts and solutions (rank 0)."""
    path = cache / "tokenizer.model"
    if dist.get_rank() == 0 and not path.exists():
        fmt = get_format(cfg.data.format)
        splits = load_splits(cfg)
        lines = [fmt.prompt(i) + fmt.solution(i) for i in splits.train + splits.heldout]
        train_sentencepiece(lines, path.with_suffix(""))
    dist.barrier()
    return path


def _finished(folder: Path, cfg: RunConfig) -> bool:
    root = folder / "checkpoints"
    marker = folder / "recipe_config.yaml"
    return (marker.exists() and marker.read_text() == to_yaml(cfg)
            and mckpt.latest_iteration(root) == cfg.train.steps if root.exists() else False)


def run_stage(name: str, cfg: RunConfig, folder: Path) -> Optional[dict]:
    """Train a cached stage unless an identical finished one exists; returns its summary."""
    if _finished(folder, cfg):
        print0(f"recipe: {name}: reusing {folder}")
        return None
    if dist.get_rank() == 0 and folder.exists():
        shutil.rmtree(folder)
    dist.barrier()
    print0(f"recipe: {name}: training ({cfg.algorithm}, {cfg.train.steps} steps) into {folder}")
    summary = train(cfg)
    destroy_parallel()
    if dist.get_rank() == 0:
        (folder / "recipe_config.yaml").write_text(to_yaml(cfg))
    dist.barrier()
    return summary


def run_recipe(path: str, overrides: list[str]) -> dict:
    settings, configs = load_recipe(path, overrides)
    init_distributed()
    cache, run_dir = Path(settings["cache_dir"]), Path(settings["run_dir"])
    tok = str(build_tokenizer(configs["teacher_sft"], cache))
    out = {}
    for stage, role in (("teacher_sft", "teacher"), ("student_sft", "student")):
        cfg = configs[stage]
        cfg.algorithm, cfg.run_dir = "sft", str(cache / role)
        cfg.student.tokenizer, cfg.student.random_init = tok, True
        out[stage] = run_stage(stage, cfg, cache / role)
    rl = configs["rl"]
    rl.run_dir = str(run_dir)
    rl.student.checkpoint = str(cache / "student" / "checkpoints")
    rl.teacher.checkpoint = str(cache / "teacher" / "checkpoints")
    rl.student.tokenizer = rl.teacher.tokenizer = tok
    rl.student.spec = {**configs["student_sft"].student.spec, **rl.student.spec}
    rl.teacher.spec = {**configs["teacher_sft"].student.spec, **rl.teacher.spec}
    rl.student.preset = rl.student.preset or configs["student_sft"].student.preset
    rl.teacher.preset = rl.teacher.preset or configs["teacher_sft"].student.preset
    if dist.get_rank() == 0 and run_dir.exists():
        shutil.rmtree(run_dir)
    dist.barrier()
    print0(f"recipe: rl: {rl.algorithm} for {rl.train.steps} steps into {run_dir}")
    out["rl"] = train(rl)
    return out
