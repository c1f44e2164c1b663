"""The run configuration documents and checks itself (config/schema.py): every field has a
docstring, registry-backed fields allow exactly their registry's keys, and `rlad train
--help-config` prints the whole schema."""

import dataclasses
import subprocess
import sys

import pytest

from rlad_megatron.data.advantages import ADVANTAGES, TEACHER_ADVANTAGES
from rlad_megatron.data.formats import FORMATS
from rlad_megatron.data.selection import SELECTION_POLICIES
from rlad_megatron.losses import AGGREGATIONS, KL_ESTIMATORS
from rlad_megatron.losses.joint import DISTILL_LOSSES
from rlad_megatron.losses.trrd import CLAMP_GRAD
from rlad_megatron.models.config import DTYPES
from rlad_megatron.config.run import ALGORITHMS, RunConfig, load_config
from rlad_megatron.config.schema import check_choices, check_finite, field_docs, format_schema, walk


def test_every_field_of_the_run_config_has_a_docstring():
    undocumented = [info.key for info in walk() if not info.doc]
    assert not undocumented, f"fields without a docstring: {undocumented}"


def test_docstrings_are_read_from_the_source_including_base_classes():
    from rlad_megatron.config.run import OptimConfig, TeacherConfig

    assert field_docs(OptimConfig)["lr"] == "Peak learning rate."  # from OptimizerSettings
    assert "resident" in field_docs(TeacherConfig)["offload"]
    assert "Tokenizer path" in field_docs(TeacherConfig)["tokenizer"]  # from ModelConfig


@pytest.mark.parametrize("key,registry", [
    ("algorithm", ALGORITHMS), ("advantage.estimator", ADVANTAGES),
    ("selection.policy", SELECTION_POLICIES), ("loss.trrd.clamp_grad", CLAMP_GRAD),
    ("loss.trrd.agg", AGGREGATIONS), ("loss.sft.agg", AGGREGATIONS),
    ("loss.kdrl.kl_estimator", KL_ESTIMATORS), ("loss.grpo.kl_estimator", KL_ESTIMATORS),
    ("imitation.advantage", TEACHER_ADVANTAGES), ("imitation.distill_loss", DISTILL_LOSSES),
    ("data.format", FORMATS), ("student.dtype", DTYPES), ("teacher.dtype", DTYPES),
])
def test_allowed_values_are_the_registries_keys(key, registry):
    info = next(i for i in walk() if i.key == key)
    assert info.choices == tuple(registry)


@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
def test_every_algorithm_builds_the_loss_its_name_maps_to(algorithm):
    loss = load_config(None, [f"algorithm={algorithm}"]).loss_for(step=1)
    assert loss.name == ALGORITHMS[algorithm]


def test_a_value_outside_its_registry_is_refused_naming_key_and_choices():
    cfg = load_config(None, ["data.answer_format=latex"])
    with pytest.raises(ValueError, match=r"data.answer_format: 'latex' is not one of auto, "
                                         r"gsm8k, boxed, plain"):
        check_choices(cfg)
    check_choices(RunConfig())  # the defaults are allowed values


def test_help_config_prints_every_key_with_its_doc():
    out = subprocess.run([sys.executable, "-m", "rlad_megatron.cli", "train", "--help-config"],
                         capture_output=True, text=True, check=True).stdout
    assert out.startswith(format_schema())
    for info in walk():
        assert info.key in out
    assert "one of: none, stream" in out and "Token budget of a micro-batch" in out


def test_the_task_list_is_in_help_config_and_in_the_docs():
    """Issue 26: the list of tasks lived only in a docstring."""
    from pathlib import Path

    from rlad_megatron.data.tasks import task_names

    out = subprocess.run([sys.executable, "-m", "rlad_megatron.cli", "train", "--help-config"],
                         capture_output=True, text=True, check=True).stdout
    listed = out.split("reasoning-gym tasks installed")[1]
    docs = (Path(__file__).resolve().parents[3] / "docs" / "training.md").read_text()
    assert len(task_names()) > 50
    for name in task_names():
        assert f" {name}," in listed or listed.rstrip().endswith(f" {name}"), name
        assert f"`{name}`" in docs, f"docs/training.md does not list the task {name}"


def test_schema_sections_are_the_config_dataclasses():
    top = [f.name for f in dataclasses.fields(RunConfig)
           if dataclasses.is_dataclass(getattr(RunConfig(), f.name))]
    sections = [i.key for i in walk() if i.section and "." not in i.key]
    assert sections == top and "loss.trrd" in [i.key for i in walk() if i.section]


@pytest.mark.parametrize("info", [i for i in walk() if "float" in i.type], ids=lambda i: i.key)
def test_every_float_field_refuses_nan_and_inf_unless_its_doc_allows_inf(info):
    """NaN compares false, so a NaN threshold would switch its gate off silently (issue 26)."""
    from rlad_megatron.config.schema import INF_ALLOWED
    from rlad_megatron.config.validate import validate_run_config

    for value in (float("nan"), float("inf"), float("-inf")):
        cfg = load_config(None, ["student.preset=tiny-llama", "student.random_init=true",
                                 f"{info.key}={value}"])
        if value == float("inf") and INF_ALLOWED in info.doc:
            check_finite(cfg)
            continue
        with pytest.raises(ValueError, match=rf"{info.key}: -?(nan|inf) is not a finite number"):
            validate_run_config(cfg, check_files=False)
