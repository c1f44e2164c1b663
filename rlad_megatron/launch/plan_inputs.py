"""The inputs of `rlad plan` (launch/plan.py): the two models' specs, from a preset, a Hugging
Face directory or config.json, a Megatron checkpoint or a run config's model section, and the
workload sizes' checks."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from rlad_megatron.launch.memory import RUN_CONFIG_KEYS, Workload
from rlad_megatron.models.spec import PRESETS, ModelSpec, get_preset


def load_model_spec(source: str, role: str = "model") -> ModelSpec:
    """A preset name, an HF directory or config.json, or a Megatron checkpoint -> ModelSpec."""
    from rlad_megatron.convert.hf_config import read_hf_config, spec_from_hf_config
    from rlad_megatron.models import checkpoint as mckpt

    path = Path(source)
    if not path.exists():
        if source in PRESETS:
            return get_preset(source)
        raise ValueError(f"{role}: {source!r} is neither a preset ({', '.join(sorted(PRESETS))}) "
                         "nor an existing path (HF model directory, config.json or Megatron "
                         "checkpoint)")
    if path.is_file():
        data = json.loads(path.read_text())
        if "spec" in data:                                    # a checkpoint's rlad_model.json
            return ModelSpec.from_dict(data["spec"], prefix=f"{role} ({path})")
        return spec_from_hf_config(data, source=str(path))
    if (path / "config.json").exists():
        return spec_from_hf_config(read_hf_config(path)[0], source=str(path / "config.json"))
    return mckpt.read_spec(path)


def spec_from_model_config(m, role: str) -> ModelSpec:
    """The ModelSpec a run config's student/teacher section describes (as train/setup.py:
    preset + spec fields, else the checkpoint's spec + spec fields, else the spec alone)."""
    from rlad_megatron.models import checkpoint as mckpt

    fields_ = dict(m.spec)
    if fields_.get("vocab_size") == 0:
        fields_["vocab_size"] = _tokenizer_vocab(m, role)
    if m.preset:
        spec = get_preset(m.preset, **fields_)
    elif m.checkpoint and not fields_.get("arch"):
        if not Path(m.checkpoint).exists():
            raise ValueError(f"{role}.checkpoint: {m.checkpoint} does not exist (set "
                             f"{role}.preset to plan before the checkpoint is converted)")
        spec = dataclasses.replace(mckpt.read_spec(m.checkpoint), **fields_)
    else:
        spec = ModelSpec.from_dict(fields_, prefix=f"{role}.spec")
    spec.validate(prefix=role)
    return spec


def _tokenizer_vocab(m, role: str) -> int:
    from rlad_megatron.data.tokenizer import load_tokenizer

    if not m.tokenizer:
        raise ValueError(f"{role}.spec.vocab_size is 0 (the tokenizer's) but {role}.tokenizer "
                         "is not set")
    return load_tokenizer(m.tokenizer).vocab_size


WORKLOAD_FLAGS = {
    "prompt_len": ("--prompt-len", 1), "response_len": ("--response-len", 1),
    "micro_batch_size": ("--micro-batch-size", 1), "mini_batches": (None, 1),
    "prompts_per_step": ("--prompts-per-step", 1), "group_size": ("--group-size", 1),
    "stream_window": ("--stream-window", 1),
    "max_tokens_per_micro_batch": ("--max-tokens-per-micro-batch", 0),
    "rollout_micro_batch": ("--rollout-batch", 0), "max_live_rows": ("--max-live-rows", 0),
    "kv_block_size": ("--kv-block-size", 1), "reserve_gib": ("--reserve", 0),
}
"""Workload size field -> (its `rlad plan` flag, the least value allowed); its run-config key is
launch/memory.py RUN_CONFIG_KEYS'."""


def check_workload(w: Workload) -> None:
    """A ValueError naming the flag (and the config key) of the first size below its least
    value: a negative length would print a layout that "fits" with negative step times, a zero
    batch a ZeroDivisionError."""
    for name, (flag, least) in WORKLOAD_FLAGS.items():
        value = getattr(w, name)
        if value < least:
            where = " or ".join(n for n in (flag, RUN_CONFIG_KEYS.get(name)) if n)
            raise ValueError(f"{where}: {value:g} must be >= {least}")
