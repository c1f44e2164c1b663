"""`rlad plan`: which TP x PP x DP layouts hold a teacher and a student on the GPUs, by how much.

    rlad plan --teacher llama3.1-405b --student llama3.1-8b --nodes 8 --gpus-per-node 8
    rlad plan --config examples/configs/qwen3_32b_to_8b.yaml --nodes 4 --gpus-per-node 8 [key=value]
    rlad plan --teacher /models/Qwen3-8B --student ckpts/qwen3-1.7b ... --json
    rlad plan --teacher llama3.1-70b --student llama3.1-8b --nodes 1 --gpus-per-node 8 --joint

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
JSON form are in launch/plan_report.py; the model and workload inputs in launch/plan_inputs.py.

A teacher on its own layout (teacher.parallel, runtime/teacher_parallel.py): `--joint` searches
the teacher's TP x PP separately from the student's, beside the shared layouts, and prints the
best shared layout next to the chosen one; `--teacher-tp/--teacher-pp` (or the run config's
teacher.parallel) fix the teacher's. Each model is then checked against its own sizes, the
teacher's DP must divide the step's rows (prompts_per_step * group_size), its weights count at
its own TP x PP (a streamed one's host copies too), and the step adds the row exchange
(launch/step_time.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from rlad_megatron.launch.memory import (GIB, MemoryEstimate, Workload, estimate,
                                         teacher_host_bytes)
from rlad_megatron.launch.plan_inputs import (WORKLOAD_FLAGS, check_workload,  # noqa: F401
                                              load_model_spec, spec_from_model_config)
from rlad_megatron.launch.step_time import Hardware, StepTime, estimate_step
from rlad_megatron.models.layout_check import (CONFIG_NAMES, TEACHER_NAMES,
                                               data_parallel_problem, model_layout_problems,
                                               possible_tp)
from rlad_megatron.models.spec import ModelSpec

LABELS = {"teacher_weights": "teacher weights", "student_weights": "student weights",
          "student_grads": "student grads", "optimizer_state": "optimizer",
          "activations": "activations", "activations_recompute": "activations (recompute)",
          "logits": "logits", "logprob_chunk": "log-prob chunk", "kv_cache": "KV cache",
          "teacher_activations": "teacher activations (streamed)",
          "reserve": "reserve", "teacher_exchange": "row exchange"}


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
    teacher_tp: Optional[int] = None
    """The teacher's own fixed layout (teacher.parallel, or --teacher-tp/--teacher-pp); None:
    the student's, unless `joint`."""
    teacher_pp: Optional[int] = None
    joint: bool = False
    """Search the teacher's TP x PP separately from the student's (teacher.parallel) as well as
    the shared layouts (--joint)."""

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
    t_tp: int = 0
    """The teacher's own TP and PP (teacher.parallel); 0: the student's."""
    t_pp: int = 0

    @property
    def own_teacher(self) -> bool:
        return bool(self.t_tp) and (self.t_tp, self.t_pp) != (self.tp, self.pp)

    @property
    def fits(self) -> bool:
        return self.headroom >= 0 and (self.host_limit is None or
                                       self.host_per_node <= self.host_limit)

    @property
    def name(self) -> str:
        base = f"TP={self.tp} PP={self.pp} DP={self.dp}"
        if not self.own_teacher:
            return base
        t_dp = self.tp * self.pp * self.dp // (self.t_tp * self.t_pp)
        return f"{base} / teacher TP={self.t_tp} PP={self.t_pp} DP={t_dp}"

    @property
    def key(self) -> tuple:
        return (self.tp, self.pp, self.t_tp or self.tp, self.t_pp or self.pp)


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
    shared: Optional[LayoutPlan] = None
    """With --joint: the best layout where the teacher shares the student's, shown beside the
    chosen one."""


def build_request(*, nodes: int, gpus_per_node: int, gpu_memory_gib: float = 80.0,
                  config=None, overrides=(), teacher: Optional[str] = None,
                  student: Optional[str] = None, tp: Optional[int] = None,
                  pp: Optional[int] = None, host_memory_gib: Optional[float] = None,
                  min_headroom_gib: float = 2.0, hardware: Optional[Hardware] = None,
                  teacher_tp: Optional[int] = None, teacher_pp: Optional[int] = None,
                  joint: bool = False, **workload) -> PlanRequest:
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
        from rlad_megatron.config.run import load_config

        is_path = config is None or isinstance(config, (str, Path))
        cfg = load_config(config, list(overrides)) if is_path else config
        built = Workload.from_run_config(cfg, **workload)
        t_spec = spec_from_model_config(cfg.teacher, "teacher") if teacher is None else None
        s_spec = spec_from_model_config(cfg.student, "student") if student is None else None
        tp = cfg.parallel.tensor if tp is None else tp
        pp = cfg.parallel.pipeline if pp is None else pp
        vpp = cfg.parallel.virtual_pipeline
        if cfg.teacher.parallel.is_own(cfg.parallel) and teacher_tp is None and teacher_pp is None:
            mine = cfg.teacher.parallel.resolve(cfg.parallel)
            teacher_tp, teacher_pp = mine.tensor, mine.pipeline
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
                       min_headroom_gib=min_headroom_gib, hardware=hardware or Hardware(),
                       teacher_tp=teacher_tp, teacher_pp=teacher_pp, joint=joint)


# ----------------------------------------------------------------------------- layouts
def layout_problems(req: PlanRequest, tp: int, pp: int, t_tp: Optional[int] = None,
                    t_pp: Optional[int] = None) -> list[str]:
    """Why layout tp x pp (the teacher at t_tp x t_pp when it has its own, teacher.parallel)
    cannot hold the two models on this many GPUs (empty: it can)."""
    if (t_tp or tp, t_pp or pp) != (tp, pp):
        return _own_teacher_problems(req, tp, pp, t_tp or tp, t_pp or pp)
    problems = [_node_problem(req, "parallel", tp)]
    for role, spec in (("teacher", req.teacher), ("student", req.student)):
        problems += model_layout_problems(spec, tp=tp, pp=pp, vpp=req.vpp, role=role)
    problems.append(_world_problem(req, "parallel", tp, pp))
    if not req.world % (tp * pp):
        problems.append(data_parallel_problem(
            "rollout.prompts_per_step", req.workload.prompts_per_step, req.world // (tp * pp),
            " (a prompt's group of samples stays on one rank)"))
    return [p for p in problems if p]


def _node_problem(req: PlanRequest, key: str, tp: int) -> str:
    """A model's TP group (config section `key`) must stay inside one node ("" when it does)."""
    if tp > req.gpus_per_node or req.gpus_per_node % tp:
        return (f"{key}.tensor: {tp} does not divide the GPUs per node {req.gpus_per_node} "
                "(a TP group must stay inside one node)")
    return ""


def _world_problem(req: PlanRequest, key: str, tp: int, pp: int) -> str:
    """A model's TP x PP (config section `key`) must divide the world ("" when it does)."""
    if req.world % (tp * pp):
        return (f"{key}.tensor * {key}.pipeline = {tp * pp} does not divide the world size "
                f"{req.nodes} nodes * {req.gpus_per_node} GPUs = {req.world}")
    return ""


def _own_teacher_problems(req: PlanRequest, tp: int, pp: int, t_tp: int, t_pp: int) -> list[str]:
    """layout_problems with the teacher on its own layout: each model against its own sizes."""
    problems = []
    rows = req.workload.prompts_per_step * req.workload.group_size
    for role, spec, size, stages, vpp, names, key in (
            ("student", req.student, tp, pp, req.vpp, CONFIG_NAMES, "parallel"),
            ("teacher", req.teacher, t_tp, t_pp, None, TEACHER_NAMES, "teacher.parallel")):
        problems.append(_node_problem(req, key, size))
        problems += model_layout_problems(spec, tp=size, pp=stages, vpp=vpp, role=role,
                                          names=names)
        problems.append(_world_problem(req, key, size, stages))
        if req.world % (size * stages):
            continue
        if role == "student":
            problems.append(data_parallel_problem(
                "rollout.prompts_per_step", req.workload.prompts_per_step,
                req.world // (size * stages), " (a prompt's group of samples stays on one rank)"))
        else:
            problems.append(data_parallel_problem(
                "rollout.prompts_per_step * rollout.group_size", rows,
                req.world // (size * stages), " of the teacher (teacher.parallel)"))
    return [p for p in problems if p]


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def evaluate(req: PlanRequest, tp: int, pp: int, t_tp: Optional[int] = None,
             t_pp: Optional[int] = None) -> LayoutPlan:
    dp = req.world // (tp * pp)
    t_tp, t_pp = t_tp or tp, t_pp or pp
    teacher = {"teacher_tp": t_tp, "teacher_pp": t_pp}
    memory = estimate(req.teacher, req.student, tp, pp, dp, req.workload, **teacher)
    total = memory.total(recompute=req.workload.recompute)
    time = estimate_step(req.teacher, req.student, tp, pp, dp, req.workload,
                         gpus_per_node=req.gpus_per_node, hw=req.hardware, **teacher)
    host = teacher_host_bytes(req.teacher, t_tp, t_pp, req.workload) * req.gpus_per_node
    limit = None if req.host_memory_gib is None else int(req.host_memory_gib * GIB)
    own = (t_tp, t_pp) != (tp, pp)
    return LayoutPlan(tp, pp, dp, memory, total, int(req.gpu_memory_gib * GIB) - total, time,
                      host, limit, t_tp if own else 0, t_pp if own else 0)


def recommendable(req: PlanRequest, lp: LayoutPlan) -> bool:
    """Fits, with at least the minimum headroom."""
    return lp.fits and lp.headroom >= req.min_headroom_gib * GIB


def _candidates(req: PlanRequest) -> list[tuple[int, int, int, int]]:
    """(tp, pp, teacher tp, teacher pp) to consider: the shared layouts; with a fixed teacher
    layout, every student layout beside it; with --joint, the shared layouts and every pair of
    a student layout (the fixed one, if any) and a different teacher layout."""
    gpus = _divisors(req.gpus_per_node)
    layers = math.gcd(req.teacher.num_layers, req.student.num_layers)
    shared = [(tp, pp, tp, pp) for tp in gpus for pp in _divisors(layers)]
    students = [(tp, pp) for tp in ([req.tp or 1] if req.tp or req.pp else gpus)
                for pp in ([req.pp or 1] if req.tp or req.pp else
                           _divisors(req.student.num_layers))]
    if req.teacher_tp or req.teacher_pp:
        return [(tp, pp, req.teacher_tp or tp, req.teacher_pp or pp)
                for tp, pp in students if (tp, pp) != (req.teacher_tp or tp,
                                                       req.teacher_pp or pp)] + shared
    if not req.joint:
        return shared
    return shared + [(tp, pp, t_tp, t_pp) for tp, pp in students for t_tp in gpus
                     for t_pp in _divisors(req.teacher.num_layers) if (t_tp, t_pp) != (tp, pp)]


def valid_layouts(req: PlanRequest) -> list[LayoutPlan]:
    """Every valid layout: the recommendable ones fastest first, then the others by headroom."""
    plans = [evaluate(req, *c) for c in _candidates(req) if not layout_problems(req, *c)]
    return sorted(plans, key=lambda p: (0, p.time.total, p.tp * p.pp) if recommendable(req, p)
                  else (1, -p.headroom, p.tp * p.pp))


def plan(req: PlanRequest) -> Plan:
    """Rank the valid layouts and decide: the fixed layout, or else the best one, must fit."""
    for key in ("nodes", "gpus_per_node"):
        if getattr(req, key) < 1:
            raise ValueError(f"--{key.replace('_', '-')} must be >= 1, got {getattr(req, key)}")
    layouts = valid_layouts(req)
    fixed_teacher = req.teacher_tp is not None or req.teacher_pp is not None
    shared = None
    if req.joint or fixed_teacher:  # the best layout without a teacher layout of its own
        shared = next((lp for lp in layouts if not lp.own_teacher and recommendable(req, lp)),
                      None)
    if (req.tp is not None or req.pp is not None) and (fixed_teacher or not req.joint):
        tp, pp = req.tp or 1, req.pp or 1
        t_tp, t_pp = req.teacher_tp or tp, req.teacher_pp or pp
        problems = layout_problems(req, tp, pp, t_tp, t_pp)
        if problems:
            name = evaluate_name(req, tp, pp, t_tp, t_pp)
            return Plan(req, layouts, None, False, f"{name} on {req.world} GPUs: "
                        + "; ".join(problems) + _alternative(layouts), shared)
        chosen = evaluate(req, tp, pp, t_tp, t_pp)
        if not chosen.fits:
            return Plan(req, layouts, chosen, False, _over(req, chosen) + _alternative(layouts),
                        shared)
        return Plan(req, layouts, chosen, True, shared=shared)
    if not layouts:
        return Plan(req, layouts, None, False, _no_layout(req))
    best = layouts[0]
    if not best.fits:
        return Plan(req, layouts, best, False, "no layout fits; the best, " + _over(req, best),
                    shared)
    if not recommendable(req, best):
        return Plan(req, layouts, best, False,
                    f"no layout leaves the minimum headroom of {req.min_headroom_gib:g} GiB: "
                    f"{best.name} fits with {gib(best.headroom)} GiB to spare (lower "
                    "--min-headroom to accept it)", shared)
    return Plan(req, layouts, best, True, shared=shared)


def evaluate_name(req: PlanRequest, tp: int, pp: int, t_tp: int, t_pp: int) -> str:
    """A layout's name without estimating it (it may not divide the world)."""
    base = f"TP={tp} PP={pp}"
    return base if (t_tp, t_pp) == (tp, pp) else f"{base} / teacher TP={t_tp} PP={t_pp}"


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
