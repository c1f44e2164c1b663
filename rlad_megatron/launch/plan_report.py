"""`rlad plan`'s output: the readable table (GiB per GPU, estimated seconds per step) and the
JSON form (bytes and seconds). The planning itself is launch/plan.py."""

from __future__ import annotations

import dataclasses

from rlad_megatron.launch.memory import GIB
from rlad_megatron.launch.plan import LayoutPlan, Plan, gib


COLUMNS = ("teacher_weights", "student_weights", "student_grads", "optimizer_state",
           "activations", "activations_recompute", "logits", "logprob_chunk", "kv_cache",
           "teacher_activations", "reserve", "teacher_exchange")
HEADERS = ("teacher", "student", "grads", "optim", "activ", "act-rc", "logits", "lp-chunk",
           "kv-cache", "t-activ", "reserve", "exchange")
MAX_ROWS = 20
"""Layouts the table lists (--joint can find hundreds); --json has them all."""


def format_plan(p: Plan) -> str:
    """A readable table (GiB per GPU), the chosen layout marked with '*', then the verdict."""
    r, w = p.request, p.request.workload
    stream = w.teacher_offload == "stream"
    shown = list(p.layouts[:MAX_ROWS])
    if p.shared is not None and all(lp.key != p.shared.key for lp in shown):
        shown.append(p.shared)
    if p.chosen is not None and all(lp.key != p.chosen.key for lp in shown):
        shown.insert(0, p.chosen)
    width = max([15] + [len(lp.name) for lp in shown])
    lines = [
        f"teacher {r.teacher.name or r.teacher.arch} ({r.teacher.num_parameters() / 1e9:.2f}B "
        f"params, {w.teacher_dtype}), student {r.student.name or r.student.arch} "
        f"({r.student.num_parameters() / 1e9:.2f}B, {w.student_dtype})",
        f"{r.nodes} node(s) x {r.gpus_per_node} GPUs of {r.gpu_memory_gib:g} GiB; sequences "
        f"{w.prompt_len} + {w.response_len} tokens, train micro-batch "
        + (f"<= {w.max_tokens_per_micro_batch} tokens, " if w.max_tokens_per_micro_batch else
           f"{w.micro_batch_size}, ") +
        f"{w.prompts_per_step} prompts x {w.group_size} samples per step, "
        f"{'distributed' if w.distributed_optimizer else 'replicated'} optimizer, activation "
        f"recompute {'on' if w.recompute else 'off'}, teacher "
        + (f"streamed from host memory (window {w.stream_window} layers"
           + (f", {r.host_memory_gib:g} GiB host memory per node)" if r.host_memory_gib
              else ")") if w.teacher_offload == "stream" else "resident"),
        "",
        f"   {'layout':<{width}} | " + " ".join(f"{h:>8}" for h in HEADERS)
        + " |    total  headroom" + ("  host/node" if stream else "") + " | est s/step",
    ]
    for lp in shown:
        mark = "*" if p.chosen is not None and lp.key == p.chosen.key else " "
        parts = lp.memory.parts()
        lines.append(f" {mark} {lp.name:<{width}} | "
                     + " ".join(f"{gib(parts[c]):>8}" for c in COLUMNS)
                     + f" | {gib(lp.total):>8} {gib(lp.headroom):>9}"
                     + (f" {gib(lp.host_per_node):>10}" if stream else "")
                     + f" | {lp.time.total:>10.2f}")
    if not shown:
        lines.append("   (no valid layout)")
    lines.append("")
    if p.chosen is not None:
        lines.append(f"estimated step of {p.chosen.name} (s; assumptions in launch/step_time.py, "
                     "set with --hw KEY=VALUE): " + ", ".join(
                         f"{k.replace('_', ' ')} {v:.2f}"
                         for k, v in p.chosen.time.parts().items()))
    if len(p.layouts) > MAX_ROWS:
        lines.append(f"({len(p.layouts) - MAX_ROWS} more valid layouts in --json)")
    if p.shared is not None and p.chosen is not None and p.shared.key != p.chosen.key:
        lines.append(f"shared layout (teacher on the student's groups): best {p.shared.name}, "
                     f"{p.shared.time.total:.2f} s/step, {gib(p.shared.headroom)} GiB free; "
                     f"{p.chosen.name}: {p.chosen.time.total:.2f} s/step "
                     f"(shared / this = "
                     f"{p.shared.time.total / max(p.chosen.time.total, 1e-12):.2f}), "
                     f"{gib(p.chosen.headroom)} GiB free")
    if p.ok:
        lines.append(f"ok: {p.chosen.name} fits with {gib(p.chosen.headroom)} GiB to spare, "
                     f"the fastest layout that leaves {r.min_headroom_gib:g} GiB")
    else:
        lines.append(f"refused: {p.reason}")
    return "\n".join(lines)


def plan_to_dict(p: Plan) -> dict:
    """The JSON form: bytes everywhere, GiB in `*_gib` fields."""
    def layout(lp: LayoutPlan) -> dict:
        return {"tp": lp.tp, "pp": lp.pp, "dp": lp.dp, "fits": lp.fits,
                "teacher_tp": lp.t_tp or lp.tp, "teacher_pp": lp.t_pp or lp.pp,
                "memory_bytes": lp.memory.parts(), "total_bytes": lp.total,
                "headroom_bytes": lp.headroom, "total_gib": round(lp.total / GIB, 3),
                "headroom_gib": round(lp.headroom / GIB, 3),
                "host_bytes_per_node": lp.host_per_node,
                "step_seconds": lp.time.total, "step_seconds_parts": lp.time.parts()}

    r = p.request
    return {
        "ok": p.ok, "reason": p.reason,
        "chosen": layout(p.chosen) if p.chosen is not None else None,
        "shared": layout(p.shared) if p.shared is not None else None,
        "layouts": [layout(lp) for lp in p.layouts],
        "request": {"nodes": r.nodes, "gpus_per_node": r.gpus_per_node,
                    "gpu_memory_gib": r.gpu_memory_gib, "tp": r.tp, "pp": r.pp, "vpp": r.vpp,
                    "teacher_tp": r.teacher_tp, "teacher_pp": r.teacher_pp, "joint": r.joint,
                    "workload": dataclasses.asdict(r.workload),
                    "host_memory_gib": r.host_memory_gib,
                    "min_headroom_gib": r.min_headroom_gib,
                    "hardware": dataclasses.asdict(r.hardware),
                    "teacher": {"name": r.teacher.name, "parameters": r.teacher.num_parameters()},
                    "student": {"name": r.student.name, "parameters": r.student.num_parameters()}},
    }
