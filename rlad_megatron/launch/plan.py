"""`rlad plan`: which TP x PP x DP layouts hold a teacher and a student on the GPUs, by how much.

    rlad plan --teacher llama3.1-405b --student llama3.1-8b --nodes 8 --gpus-per-node 8
    rlad plan --config examples/configs/qwen3_32b_to_8b.yaml --nodes 4 --gpus-per-node 8 [key=value]
    rlad plan --teacher /models/Qwen3-8B --student ckpts/qwen3-1.7b ... --json

A model is a preset name (models/spec.py), a Hugging Face directory or its config.json, or a
Megatron checkpoint written by `rlad convert import` / `rlad train` (its rlad_model.json).

Valid layouts (student and teacher share one, runtime/parallel.py; the model rules are
models/layout_check.py's, which the trainer and the converter run too):
  TP divides the GPUs per node (a TP group stays inside a node) and both models' attention
     heads, query groups and ffn_hidden_size;
  PP (times the virtual pipeline size) divides both models' layer counts;
  DP = world / (TP * PP), and DP divides rollout.prompts_per_step (a prompt's group stays on
     one rank).
Each valid layout gets the per-GPU memory of launch/memory.py (and, with a streamed teacher,
the host memory per node) and the estimated step time of launch/step_time.py. The layouts that
fit with at least --min-headroom GiB to spare are ranked fastest first; the recommendation is
the fastest, not the most sharded (more TP and PP buy memory with communication and pipeline
bubbles). A layout fixed by the run config (parallel.tensor / pipeline) or by --tp / --pp is
checked as is; the request is refused, with the reason, when that layout does not divide the
models or does not fit, or, with no fixed layout, when no valid layout fits. The tables and the
JSON form are in launch/plan_report.py.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from rlad_megatron.launch.memory import (GIB, MemoryEstimate, Workload, estimate,
                                         teacher_host_bytes)
from rlad_megatron.launch.step_time import Hardware, StepTime, estimate_step
from rlad_megatron.models.layout_check import (data_parallel_problem, model_layout_problems,
                                               possible_tp)
from rlad_megatron.models.spec import PRESETS, ModelSpec, get_preset

LABELS = {"teacher_weights": "teacher weights", "student_weights": "student weights",
          "student_grads": "student grads", "optimizer_state": "optimizer",
          "activations": "activations", "activations_recompute": "activations (recompute)",
          "logits": "logits", "logprob_chunk": "log-prob chunk", "kv_cache": "KV cache",
          "teacher_activations": "teacher activations (streamed)",
          "reserve": "reserve"}


@dataclass
class PlanRequest:
    teacher: ModelSpec
    student: ModelSpec
    nodes: int
    gpus_per_node: int
    gpu_memory_gib: float = 80.0
    workload: Workload = field(default_factory=Workload)
    tp: Optional[int] = None
    """A fixed layout (the run config's parallel.tensor/pipeline, or --tp/--pp); None: any."""
    pp: Optional[int] = None
    vpp: Optional[int] = None
    host_memory_gib: Optional[float] = None
    """Host memory per node for a streamed teacher's layers; None: not checked."""
    min_headroom_gib: float = 2.0
    """A layout is recommended only with at least this much GPU memory to spare."""
    hardware: Hardware = field(default_factory=Hardware)
    """Assumptions of the step-time estimate (launch/step_time.py)."""

    @property
    def world(self) -> int:
        return self.nodes * self.gpus_per_node


@dataclass
class LayoutPlan:
    tp: int
    pp: int
    dp: int
    memory: MemoryEstimate
    total: int
    headroom: int
    """GPU memory minus total, in bytes; negative when it does not fit."""
    time: StepTime
    host_per_node: int = 0
    """Host bytes per node of a streamed teacher's layers (every rank holds its own copy)."""
    host_limit: Optional[int] = None

    @property
    def fits(self) -> bool:
        return self.headroom >= 0 and (self.host_limit is None or
                                       self.host_per_node <= self.host_limit)

    @property
    def name(self) -> str:
        return f"TP={self.tp} PP={self.pp} DP={self.dp}"


@dataclass
class Plan:
    request: PlanRequest
    layouts: list[LayoutPlan]
    """Every valid layout: those that fit with the minimum headroom, fastest first, then the
    rest, most headroom first."""
    chosen: Optional[LayoutPlan]
    """The fixed layout, or else the fastest that fits; None when no layout is valid."""
    ok: bool
    reason: Optional[str] = None
    """Why the request is refused (None when ok)."""


# ----------------------------------------------------------------------------- models
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


def build_request(*, nodes: int, gpus_per_node: int, gpu_memory_gib: float = 80.0,
                  config=None, overrides=(), teacher: Optional[str] = None,
                  student: Optional[str] = None, tp: Optional[int] = None,
                  pp: Optional[int] = None, host_memory_gib: Optional[float] = None,
                  min_headroom_gib: float = 2.0, hardware: Optional[Hardware] = None,
                  **workload) -> PlanRequest:
    """A PlanRequest from a run config (a YAML path + dotted overrides, or a RunConfig) and/or
    explicit models and sizes.

    Explicit arguments win over the config; `workload` holds Workload fields, None = unset."""
    for name, value in (("--nodes", nodes), ("--gpus-per-node", gpus_per_node),
                        ("--gpu-memory", gpu_memory_gib), ("--host-memory", host_memory_gib)):
        if value is not None and not value > 0:
            raise ValueError(f"{name}: {value:g} must be > 0")
    if min_headroom_gib < 0:
        raise ValueError(f"--min-headroom: {min_headroom_gib:g} must be >= 0")
    if workload.get("rollout_engine") not in (None, "static", "continuous"):
        raise ValueError(f"--rollout-engine: {workload['rollout_engine']!r} is not one of "
                         "static, continuous")
    if workload.get("teacher_offload") not in (None, "none", "stream"):
        raise ValueError(f"--teacher-offload: {workload['teacher_offload']!r} is not one of "
                         "none, stream")
    workload = {k: v for k, v in workload.items() if v is not None}
    vpp = None
    if config is not None or overrides:
        from rlad_megatron.train.config import load_config

        is_path = config is None or isinstance(config, (str, Path))
        cfg = load_config(config, list(overrides)) if is_path else config
        built = Workload.from_run_config(cfg, **workload)
        t_spec = spec_from_model_config(cfg.teacher, "teacher") if teacher is None else None
        s_spec = spec_from_model_config(cfg.student, "student") if student is None else None
        tp = cfg.parallel.tensor if tp is None else tp
        pp = cfg.parallel.pipeline if pp is None else pp
        vpp = cfg.parallel.virtual_pipeline
    else:
        built = Workload(**workload)
        t_spec = s_spec = None
        if teacher is None or student is None:
            raise ValueError("give --teacher and --student (preset, HF directory or Megatron "
                             "checkpoint), or --config with a run config")
    check_workload(built)
    t_spec = t_spec or load_model_spec(teacher, "teacher")
    s_spec = s_spec or load_model_spec(student, "student")
    return PlanRequest(teacher=t_spec, student=s_spec, nodes=nodes, gpus_per_node=gpus_per_node,
                       gpu_memory_gib=gpu_memory_gib, workload=built, tp=tp,
                       pp=pp, vpp=vpp, host_memory_gib=host_memory_gib,
                       min_headroom_gib=min_headroom_gib, hardware=hardware or Hardware())


WORKLOAD_FLAGS = {
    "prompt_len": ("--prompt-len", None, 1), "response_len": ("--response-len",
                                                                "rollout.max_new_tokens", 1),
    "micro_batch_size": ("--micro-batch-size", "train.micro_batch_size", 1),
    "mini_batches": (None, "train.mini_batches", 1),
    "prompts_per_step": ("--prompts-per-step", "rollout.prompts_per_step", 1),
    "group_size": ("--group-size", "rollout.group_size", 1),
    "stream_window": ("--stream-window", "teacher.stream_window", 1),
    "max_tokens_per_micro_batch": ("--max-tokens-per-micro-batch",
                                   "train.max_tokens_per_micro_batch", 0),
    "rollout_micro_batch": ("--rollout-batch", "rollout.micro_batch_size", 0),
    "max_live_rows": ("--max-live-rows", "rollout.max_live_rows", 0),
    "kv_block_size": ("--kv-block-size", "rollout.kv_block_size", 1),
    "reserve_gib": ("--reserve", None, 0),
}
"""Workload field -> (its flag, its run-config key, the least value allowed)."""


def check_workload(w: Workload) -> None:
    """A ValueError naming the flag (and the config key) of the first size below its least
    value: a negative length would print a layout that "fits" with negative step times, a zero
    batch a ZeroDivisionError."""
    for name, (flag, key, least) in WORKLOAD_FLAGS.items():
        value = getattr(w, name)
        if value < least:
            where = " or ".join(n for n in (flag, key) if n)
            raise ValueError(f"{where}: {value:g} must be >= {least}")


# ----------------------------------------------------------------------------- layouts
def layout_problems(req: PlanRequest, tp: int, pp: int) -> list[str]:
    """Why layout tp x pp cannot hold the two models on this many GPUs (empty: it can)."""
    problems = []
    if tp > req.gpus_per_node or req.gpus_per_node % tp:
        problems.append(f"parallel.tensor: {tp} does not divide the GPUs per node "
                        f"{req.gpus_per_node} (a TP group must stay inside one node)")
    for role, spec in (("teacher", req.teacher), ("student", req.student)):
        problems += model_layout_problems(spec, tp=tp, pp=pp, vpp=req.vpp, role=role)
    if req.world % (tp * pp):
        problems.append(f"parallel.tensor * parallel.pipeline = {tp * pp} does not divide the "
                        f"world size {req.nodes} nodes * {req.gpus_per_node} GPUs = {req.world}")
    else:
        problems.append(data_parallel_problem(
            "rollout.prompts_per_step", req.workload.prompts_per_step, req.world // (tp * pp),
            " (a prompt's group of samples stays on one rank)"))
    return [p for p in problems if p]


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def evaluate(req: PlanRequest, tp: int, pp: int) -> LayoutPlan:
    dp = req.world // (tp * pp)
    memory = estimate(req.teacher, req.student, tp, pp, dp, req.workload)
    total = memory.total(recompute=req.workload.recompute)
    time = estimate_step(req.teacher, req.student, tp, pp, dp, req.workload,
                         gpus_per_node=req.gpus_per_node, hw=req.hardware)
    host = teacher_host_bytes(req.teacher, tp, pp, req.workload) * req.gpus_per_node
    limit = None if req.host_memory_gib is None else int(req.host_memory_gib * GIB)
    return LayoutPlan(tp, pp, dp, memory, total, int(req.gpu_memory_gib * GIB) - total, time,
                      host, limit)


def recommendable(req: PlanRequest, lp: LayoutPlan) -> bool:
    """Fits, with at least the minimum headroom."""
    return lp.fits and lp.headroom >= req.min_headroom_gib * GIB


def valid_layouts(req: PlanRequest) -> list[LayoutPlan]:
    """Every valid (tp, pp): the recommendable ones fastest first, then the others by headroom."""
    layers = math.gcd(req.teacher.num_layers, req.student.num_layers)
    plans = [evaluate(req, tp, pp) for tp in _divisors(req.gpus_per_node)
             for pp in _divisors(layers) if not layout_problems(req, tp, pp)]
    return sorted(plans, key=lambda p: (0, p.time.total, p.tp * p.pp) if recommendable(req, p)
                  else (1, -p.headroom, p.tp * p.pp))


def plan(req: PlanRequest) -> Plan:
    """Rank the valid layouts and decide: the fixed layout, or else the best one, must fit."""
    for key in ("nodes", "gpus_per_node"):
        if getattr(req, key) < 1:
            raise ValueError(f"--{key.replace('_', '-')} must be >= 1, got {getattr(req, key)}")
    layouts = valid_layouts(req)
    if req.tp is not None or req.pp is not None:
        tp, pp = req.tp or 1, req.pp or 1
        problems = layout_problems(req, tp, pp)
        if problems:
            return Plan(req, layouts, None, False, f"TP={tp} PP={pp} on {req.world} GPUs: "
                        + "; ".join(problems) + _alternative(layouts))
        chosen = evaluate(req, tp, pp)
        if not chosen.fits:
            return Plan(req, layouts, chosen, False, _over(req, chosen) + _alternative(layouts))
        return Plan(req, layouts, chosen, True)
    if not layouts:
        return Plan(req, layouts, None, False, _no_layout(req))
    best = layouts[0]
    if not best.fits:
        return Plan(req, layouts, best, False, "no layout fits; the best, " + _over(req, best))
    if not recommendable(req, best):
        return Plan(req, layouts, best, False,
                    f"no layout leaves the minimum headroom of {req.min_headroom_gib:g} GiB: "
                    f"{best.name} fits with {gib(best.headroom)} GiB to spare (lower "
                    "--min-headroom to accept it)")
    return Plan(req, layouts, best, True)


def _over(req: PlanRequest, lp: LayoutPlan) -> str:
    if lp.headroom >= 0:  # the GPU holds it: the host does not
        per_rank = lp.host_per_node // req.gpus_per_node
        return (f"{lp.name}: the streamed teacher's layers need {gib(lp.host_per_node)} GiB of "
                f"host memory per node ({req.gpus_per_node} ranks x {gib(per_rank)} GiB), "
                f"{gib(lp.host_per_node - lp.host_limit)} GiB more than --host-memory "
                f"{req.host_memory_gib:g} GiB")
    parts = sorted(((v, LABELS[k]) for k, v in lp.memory.parts().items()
                    if k != ("activations" if req.workload.recompute else "activations_recompute")),
                   reverse=True)
    text = (f"{lp.name} needs {gib(lp.total)} GiB per GPU, {gib(-lp.headroom)} GiB more than "
            f"the {req.gpu_memory_gib:g} GiB of a GPU (" +
            ", ".join(f"{label} {gib(v)}" for v, label in parts[:4]) + ")")
    if not req.workload.recompute:
        with_rc = lp.memory.total(recompute=True)
        if with_rc <= req.gpu_memory_gib * GIB:
            text += (f"; with full activation recompute it would need {gib(with_rc)} GiB, "
                     "which the trainer does not offer yet")
    return text


def _alternative(layouts: list[LayoutPlan]) -> str:
    fitting = [lp for lp in layouts if lp.fits]
    if not fitting:
        return ""
    return "; layouts that fit: " + ", ".join(
        f"{lp.name} ({gib(lp.headroom)} GiB free)" for lp in fitting[:3])


def _no_layout(req: PlanRequest) -> str:
    tps = [tp for tp in _divisors(req.gpus_per_node)
           if all(tp in possible_tp(s) for s in (req.teacher, req.student))]
    pps = _divisors(math.gcd(req.teacher.num_layers, req.student.num_layers) // (req.vpp or 1))
    return (f"no valid layout on {req.nodes} x {req.gpus_per_node} GPUs: TP in {tps} (divides "
            f"{req.gpus_per_node} GPUs per node and both models' heads, query groups and ffn "
            f"sizes), PP in {pps} (divides both layer counts {req.teacher.num_layers} and "
            f"{req.student.num_layers}), but no TP * PP gives a data-parallel size that divides "
            f"{req.world} GPUs and rollout.prompts_per_step {req.workload.prompts_per_step}")


def gib(n: float) -> str:
    """Bytes as GiB with one decimal, for messages and tables."""
    return f"{n / GIB:.1f}"
