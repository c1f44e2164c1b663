"""A prepared recipe stage is reused only when its recorded config equals the requested one,
read back through the schema: fields added to RunConfig since (at their defaults) keep it."""
from pathlib import Path

import yaml

from rlad_megatron.models import checkpoint as mckpt
from rlad_megatron.train.config import load_config, to_yaml
from rlad_megatron.train.recipe import MARKER, stage_finished


def _stage(tmp_path: Path, marker: dict, steps: int) -> Path:
    folder = tmp_path / "teacher"
    root = folder / "checkpoints"
    mckpt.iter_dir(root, steps).mkdir(parents=True)
    (root / mckpt.POINTER).write_text(str(steps))
    (folder / MARKER).write_text(yaml.safe_dump(marker))
    return folder


def test_stage_from_an_older_schema_is_reused(tmp_path):
    cfg = load_config(None, ["train.steps=7", "optimizer.lr=3e-4"])
    recorded = yaml.safe_load(to_yaml(cfg))
    recorded.pop("imitation")                      # written before the section existed
    recorded["rollout"].pop("teacher_samples")
    assert stage_finished(_stage(tmp_path, recorded, 7), cfg)


def test_stage_with_another_setting_or_unknown_key_is_not_reused(tmp_path):
    cfg = load_config(None, ["train.steps=7", "optimizer.lr=3e-4"])
    recorded = yaml.safe_load(to_yaml(cfg))
    recorded["optimizer"]["lr"] = 1e-4
    assert not stage_finished(_stage(tmp_path / "a", recorded, 7), cfg)
    recorded = yaml.safe_load(to_yaml(cfg))
    recorded["train"]["retired_option"] = 1
    assert not stage_finished(_stage(tmp_path / "b", recorded, 7), cfg)
    # the same config but the checkpoint stopped short of train.steps
    assert not stage_finished(_stage(tmp_path / "c", yaml.safe_load(to_yaml(cfg)), 5), cfg)
