"""Recipe factories find their YAML in a folder the user passes, in $RLAD_CONFIG_DIR, or in the
source checkout; a missing one is named (launch/nemo_run.py recipe_path)."""

import shutil
from pathlib import Path

import pytest

from rlad_megatron.launch.nemo_run import RECIPES, recipe_path

CHECKOUT = Path(__file__).resolve().parents[3] / "examples" / "configs"


def test_recipe_comes_from_the_passed_folder_then_the_environment_then_the_checkout(
        tmp_path, monkeypatch):
    mine = tmp_path / "mine"
    mine.mkdir()
    shutil.copy(CHECKOUT / RECIPES["qwen3_8b_to_1_7b"], mine)
    monkeypatch.delenv("RLAD_CONFIG_DIR", raising=False)
    assert recipe_path("qwen3_8b_to_1_7b", str(mine)) == mine / "qwen3_8b_to_1.7b.yaml"
    assert recipe_path("qwen3_8b_to_1_7b") == CHECKOUT / "qwen3_8b_to_1.7b.yaml"
    monkeypatch.setenv("RLAD_CONFIG_DIR", str(mine))
    assert recipe_path("qwen3_8b_to_1_7b") == mine / "qwen3_8b_to_1.7b.yaml"
    with pytest.raises(FileNotFoundError, match=r"recipe qwen3_32b_to_8b: .*mine/"
                                                r"qwen3_32b_to_8b.yaml does not exist"):
        recipe_path("qwen3_32b_to_8b")


def test_every_recipe_is_in_the_checkout():
    for factory in RECIPES:
        assert recipe_path(factory, str(CHECKOUT)).is_file()
