"""A prepared recipe stage is reused only when its recorded config equals the requested one,
read back through the schema: fields added to RunConfig since (at their defaults) keep it."""
from pathlib import Path

import yaml

from rlad_megatron.models import checkpoint as mckpt
from rlad_megatron.config.run import load_config, to_yaml
from rlad_megatron.reproduce.recipe import MARKER, stage_finished


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


def _in_cache(cache: str, *extra: str):
    return load_config(None, ["train.steps=7", f"run_dir={cache}/teacher",
                              f"student.tokenizer={cache}/tokenizer.model", *extra])


def test_the_cache_key_does_not_depend_on_how_or_where_the_cache_path_is_written(tmp_path):
    """Issue 26 item 6: a copy of .cache/rlad_demo named by a relative path retrained both
    stages; the same folder by its absolute path was reused."""
    recorded = yaml.safe_load(to_yaml(_in_cache(".cache/rlad_demo")))
    folder = _stage(tmp_path, recorded, 7)
    for cache in (str(tmp_path), f"{tmp_path}/", "../copy/of/rlad_demo", "./.cache/rlad_demo"):
        assert stage_finished(folder, _in_cache(cache)), cache
    assert not stage_finished(folder, _in_cache(str(tmp_path), "optimizer.lr=3e-4"))
    # a path outside the cache still counts as written
    assert not stage_finished(folder, _in_cache(str(tmp_path), "student.tokenizer=/x/tok.model"))


def test_a_stage_trained_again_says_why(tmp_path):
    from rlad_megatron.reproduce.recipe import _why_not_reused

    folder = _stage(tmp_path, yaml.safe_load(to_yaml(_in_cache(".cache/d"))), 7)
    why = _why_not_reused(folder, _in_cache(str(tmp_path), "optimizer.lr=3e-4"))
    assert why == "its config differs in optimizer.lr (1e-06 -> 0.0003)"
    assert "did not reach train.steps = 7" in _why_not_reused(
        _stage(tmp_path / "b", yaml.safe_load(to_yaml(_in_cache(".cache/d"))), 5),
        _in_cache(str(tmp_path / "b")))
