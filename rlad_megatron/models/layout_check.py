"""Whether a parallel layout can hold a model: the one check that the trainer's model build, the
planner (`rlad plan`) and the converter (`rlad convert import`) run (cf. torchtitan's
ParallelDims._validate).

    model_layout_problems(spec, *, tp, pp=1, vpp=None, sequence_parallel=False, role="model",
                          names=CONFIG_NAMES) -> list[str]     every problem (planner, converter)
    check_model_layout(spec, *, same keywords) -> None         ValueError: the first (trainer)
    data_parallel_problem(key, value, dp, why="") -> str|None  the data-parallel size divides

Rules (megatron-core's): TP divides the attention heads, the query groups and ffn_hidden_size
(the column- and row-parallel splits); PP x VPP divides the layers (every model chunk holds the
same number of layers); sequence parallelism needs TP > 1. The vocabulary needs no rule: it is
padded to a multiple of make_vocab_size_divisible_by * TP (models/config.py padded_vocab_size).

Each message names the knob and the key with both values, e.g.
"parallel.tensor: 3 does not divide teacher.num_query_groups: 8 (possible TP: 1, 2, 4, 8)";
`names` says how the knobs are spelled where the layout came from (run config or command line).
"""

from __future__ import annotations

from typing import Optional

from rlad_megatron.models.spec import ModelSpec

CONFIG_NAMES = {"tp": "parallel.tensor", "pp": "parallel.pipeline",
                "pp_vpp": "parallel.pipeline * virtual_pipeline",
                "sp": "parallel.sequence_parallel"}
"""The knobs as a run config spells them."""
TEACHER_NAMES = {key: "teacher." + name for key, name in CONFIG_NAMES.items()}
"""The same knobs of a teacher on its own layout (teacher.parallel, runtime/teacher_parallel.py)."""
CLI_NAMES = {"tp": "--tp", "pp": "--pp", "pp_vpp": "--pp * --vpp", "sp": "--sequence-parallel"}
"""The knobs as a command line spells them."""
TP_KEYS = ("num_attention_heads", "num_query_groups", "ffn_hidden_size")
"""The spec sizes that tensor parallelism splits."""


def possible_tp(spec: ModelSpec) -> list[int]:
    """Every TP size that divides all of TP_KEYS."""
    return [t for t in range(1, spec.num_query_groups + 1)
            if not any(getattr(spec, key) % t for key in TP_KEYS)]


def model_layout_problems(spec: ModelSpec, *, tp: int, pp: int = 1, vpp: Optional[int] = None,
                          sequence_parallel: bool = False, role: str = "model",
                          names: dict = CONFIG_NAMES) -> list[str]:
    """Why TP=tp, PP=pp (x VPP=vpp) cannot hold `spec` (empty: it can). `role` prefixes the spec
    keys in messages ("" for none)."""
    where = f"{role}." if role else ""
    problems = []
    for key in TP_KEYS:
        value = getattr(spec, key)
        if value % tp:
            problems.append(f"{names['tp']}: {tp} does not divide {where}{key}: {value} "
                            f"(possible TP: {', '.join(map(str, possible_tp(spec)))})")
    stages = pp * (vpp or 1)
    if spec.num_layers % stages:
        problems.append(f"{names['pp_vpp' if vpp else 'pp']}: {stages} does not divide "
                        f"{where}num_layers: {spec.num_layers}")
    if sequence_parallel and tp == 1:
        problems.append(f"{names['sp']} needs {names['tp']} > 1")
    return problems


def check_model_layout(spec: ModelSpec, *, tp: int, pp: int = 1, vpp: Optional[int] = None,
                       sequence_parallel: bool = False, role: str = "model",
                       names: dict = CONFIG_NAMES) -> None:
    """ValueError naming the knob, the key and both values when the layout cannot hold `spec`."""
    problems = model_layout_problems(spec, tp=tp, pp=pp, vpp=vpp,
                                     sequence_parallel=sequence_parallel, role=role, names=names)
    if problems:
        raise ValueError(problems[0])


def data_parallel_problem(key: str, value: int, dp: int, why: str = "") -> Optional[str]:
    """The message when the data-parallel size `dp` does not divide `key` = `value` (None when it
    does); `why` is appended, e.g. " (a prompt's group of samples stays on one rank)"."""
    if value % dp:
        return f"{key} = {value} is not divisible by the data-parallel size {dp}{why}"
    return None
