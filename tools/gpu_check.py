"""One prepared GPU check (tools/gpu_check.sh runs it; at most ~8 minutes on one GPU).

    python tools/gpu_check.py [--out DIR]        (default DIR: bench/results/gpu)

What CI cannot check on CPU, on one CUDA device, single process:
  1. layer specs: transformer-engine's spec against megatron's local spec, the same weights,
     forward log-probs (fp32, and bf16 against fp32): max |diff|;
  2. the streamed teacher (teacher.offload=stream) against the resident one in bf16: identical
     log-probs?, scoring time with window 1 (no overlap) and window 2 (next layer copied on a side
     stream), the copy time, the peak CUDA memory of each;
  3. rollout speed: tokens per second of `generate` at batch 8 and 32;
  4. teacher scoring during the rollout (teacher.score_during_rollout): 32 rows generated in
     micro-batches of 8, the teacher scoring each on a side CUDA stream as it finishes, against
     generating all and scoring after: seconds of each and whether the log-probs are identical;
  5. the RL loop: a whole `rlad train` RLAD run (train/loop.py, in process) of RL_STEPS steps,
     TP=1, bf16 student and teacher, with megatron's local layer spec and, where it imports,
     transformer-engine's: rollout tokens per second, seconds per phase (mean over the steps
     after the first), the losses (finite?) and whether the on-policy path skipped the
     old-log-prob pass (config/on_policy.py). Its run folders go under DIR/rl_<spec>/.
Writes DIR/gpu_check.json and prints `RESULT gpu_check ...` last. Without CUDA it exits 2
saying so (CI never runs it). `--only rl` runs section 5 alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path
from unittest import mock

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(1, str(REPO / "tests"))  # tiny_runs: the tests' tiny RLAD run and tokenizer
RL_STEPS = 4


def _build(spec, par, weights, dtype, *, local_spec=False):
    from rlad_megatron.convert.layout import load_hf_tensors
    from rlad_megatron.models import config as mconfig
    from rlad_megatron.models.build import build_teacher

    ctx = (mock.patch.object(mconfig, "use_transformer_engine", return_value=False)
           if local_spec else mock.patch.object(mconfig, "use_transformer_engine",
                                                wraps=mconfig.use_transformer_engine))
    with ctx:
        model = build_teacher(spec, par, dtype=dtype)
    load_hf_tensors(model.chunks, lambda n: weights[n], spec=spec, tp=1, tp_rank=0,
                    padded_vocab=model.padded_vocab_size)
    return model


def _timed(fn, reps=3):
    fn()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        out = fn()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return out, best


RL_SIZES = ["student.spec.num_layers=4", "student.spec.hidden_size=512",
            "student.spec.ffn_hidden_size=2048", "student.spec.num_attention_heads=8",
            "student.spec.num_query_groups=8", "teacher.spec.num_layers=6",
            "teacher.spec.hidden_size=512", "teacher.spec.ffn_hidden_size=2048",
            "teacher.spec.num_attention_heads=8", "teacher.spec.num_query_groups=8",
            "rollout.prompts_per_step=16", "rollout.group_size=8", "rollout.max_new_tokens=128",
            "train.micro_batch_size=16", "eval.num_prompts=8"]
"""Section 5's run on a GPU (tests/unit/train/test_gpu_check_rl_loop.py runs it small on CPU)."""


def rl_loop(out: Path, local_spec: bool, *, dtype: str = "bf16", steps: int = RL_STEPS,
            sizes: tuple = tuple(RL_SIZES)) -> dict:
    """Section 5: `rlad train` (algorithm rlad) for `steps` steps; what it logged."""
    from tiny_runs import char_tokenizer, tiny_overrides

    from rlad_megatron.models import config as mconfig
    from rlad_megatron.config.run import load_config
    from rlad_megatron.train.loop import train

    run_dir = out / f"rl_{'local' if local_spec else 'te'}"
    tok = char_tokenizer(out)
    cfg = load_config(None, tiny_overrides(tok, run_dir, "rlad", steps=steps) + list(sizes) + [
        f"student.dtype={dtype}", f"teacher.dtype={dtype}", "parallel.tensor=1",
        "rollout.temperature=1.0", "train.mini_batches=1", "eval.at_start=false",
        "logging.tensorboard=false", "checkpoint.save_every=0",
        # the static engine runs without flash-attn; continuous_section times the default
        "rollout.engine=static"])
    ctx = (mock.patch.object(mconfig, "use_transformer_engine", return_value=False)
           if local_spec else mock.patch.object(mconfig, "use_transformer_engine",
                                                wraps=mconfig.use_transformer_engine))
    t = time.perf_counter()
    with ctx:
        train(cfg)
    wall = time.perf_counter() - t
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss/trrd" in r]
    timed = steps[1:] or steps  # the first step compiles and allocates
    phases = sorted({k for r in timed for k in r if k.startswith("time/")})
    mean = {k: sum(r.get(k, 0.0) for r in timed) / len(timed) for k in phases}
    rows_per_step = cfg.rollout.prompts_per_step * cfg.rollout.group_size
    tokens = [rows_per_step * r["rollout/response_len"] for r in timed]
    return {"steps": len(steps), "wall_s": wall, "seconds_per_phase": mean,
            "rollout_tokens_per_s": sum(tokens) / max(sum(r["time/rollout_s"] for r in timed),
                                                      1e-9),
            "losses": [r["loss/trrd"] for r in steps],
            "losses_finite": all(abs(r["loss/trrd"]) < float("inf") for r in steps),
            "old_logprobs_pass": [r.get("train/old_logprobs_pass") for r in steps],
            "reward_mean": [r["rollout/reward_mean"] for r in steps]}


def continuous_section(student) -> dict:
    """bench/skewed.py's workload on the GPU: 128 rows, 256 new tokens, 88 EOS ids (a geometric
    tail of lengths), 32 rows at a time: the static engine against rollout.engine=continuous
    (megatron's flash-attn paged kernels; reported as not run where flash-attn is missing)."""
    import dataclasses

    from rlad_megatron.rollout import GenerationConfig, generate_detailed
    from rlad_megatron.runtime.paged_attention import check_dynamic_attention

    try:
        check_dynamic_attention()
    except ValueError as e:
        return {"continuous": f"not run: {e}"}
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(200, 32000, (32,), generator=g).tolist() for _ in range(128)]
    gen = GenerationConfig(max_new_tokens=256, eos_token_id=list(range(100, 188)),
                           micro_batch_size=32, progress=False, engine="static")
    out = {}
    for engine, cfg in (("static", gen), ("continuous", dataclasses.replace(
            gen, engine="continuous", max_live_rows=32, kv_block_size=256))):
        result, secs = _timed(lambda c=cfg: generate_detailed(student, prompts, c, seed=1))
        out[f"skewed_{engine}_tokens_per_s"] = float(result.batch.response_lengths.sum()) / secs
    out["skewed_continuous_over_static"] = (out["skewed_continuous_tokens_per_s"] /
                                            out["skewed_static_tokens_per_s"])
    return out


def rl_section(report: dict, out: Path) -> None:
    from rlad_megatron.models.config import use_transformer_engine

    for name, local in (("local", True), ("te", False)):
        if not local and not use_transformer_engine():
            report["rl_te"] = "transformer-engine does not import: not run"
            continue
        try:
            report[f"rl_{name}"] = rl_loop(out, local)
        except Exception as e:  # report and go on: the other spec's run still says something
            import traceback
            report[f"rl_{name}"] = {"error": repr(e), "traceback": traceback.format_exc()[-4000:]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "gpu"))
    ap.add_argument("--only", choices=("all", "rl"), default="all")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check: needs a CUDA GPU; nothing was run", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.only == "rl":
        report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
        rl_section(report, out)
        (out / "gpu_check_rl.json").write_text(json.dumps(report, indent=2))
        print(json.dumps(report, indent=2))
        print(f"RESULT gpu_check_rl {_rl_result(report)}")
        return 0

    from rlad_megatron.convert.init_weights import random_hf_weights
    from rlad_megatron.models.config import use_transformer_engine
    from rlad_megatron.models.forward import forward_logprobs
    from rlad_megatron.models.spec import get_preset
    from rlad_megatron.models.teacher_stream import stream_teacher, streamed_logprobs
    from rlad_megatron.rollout import GenerationConfig, generate
    from rlad_megatron.runtime import ParallelConfig, init_distributed, init_parallel

    init_distributed(timeout_s=600)
    par = init_parallel(ParallelConfig(seed=0))
    spec = get_preset("tiny-llama", vocab_size=32000, num_layers=16, hidden_size=1024,
                      ffn_hidden_size=4096, num_attention_heads=16, num_query_groups=4,
                      max_position_embeddings=2048, name="gpu-check")
    weights = random_hf_weights(spec, seed=0)
    tokens = torch.randint(0, spec.vocab_size, (32, 1024),
                           generator=torch.Generator().manual_seed(1))
    report: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                    "machine": platform.machine(), "transformer_engine": use_transformer_engine()}

    # 1. layer specs
    local32 = _build(spec, par, weights, "fp32", local_spec=True)
    lp_local = forward_logprobs(local32, tokens, micro_batch_size=8, fused=True)
    del local32
    if use_transformer_engine():
        te32 = _build(spec, par, weights, "fp32")
        lp_te = forward_logprobs(te32, tokens, micro_batch_size=8, fused=True)
        report["te_vs_local_fp32_max_abs"] = float((lp_te - lp_local).abs().max())
        del te32
    bf16 = _build(spec, par, weights, "bf16")
    lp_bf16, resident_s = _timed(lambda m=bf16: forward_logprobs(m, tokens, micro_batch_size=8,
                                                                 fused=True))
    report["bf16_vs_fp32_max_abs"] = float((lp_bf16 - lp_local).abs().max())
    report["bf16_vs_fp32_mean_abs"] = float((lp_bf16 - lp_local).abs().mean())
    report["resident_s"] = resident_s
    torch.cuda.reset_peak_memory_stats()
    forward_logprobs(bf16, tokens, micro_batch_size=8, fused=True)
    report["resident_peak_mib"] = torch.cuda.max_memory_allocated() / 2 ** 20
    del bf16
    torch.cuda.empty_cache()

    # 2. streamed teacher
    for window in (1, 2):
        model = _build(spec, par, weights, "bf16")
        teacher = stream_teacher(model, window=window)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        lp, secs = _timed(lambda: streamed_logprobs(teacher, tokens, micro_batch_size=8))
        report[f"stream_w{window}_s"] = secs
        report[f"stream_w{window}_copy_s"] = teacher.residency.transfer_s
        report[f"stream_w{window}_peak_mib"] = torch.cuda.max_memory_allocated() / 2 ** 20
        report[f"stream_w{window}_identical"] = bool(torch.equal(lp, lp_bf16))
        del model, teacher
        torch.cuda.empty_cache()
    report["stream_time_ratio"] = report["stream_w2_s"] / report["resident_s"]

    # 3. rollout speed
    s_spec = dataclasses.replace(spec, num_layers=8, name="gpu-check-student")
    student = _build(s_spec, par, random_hf_weights(s_spec, seed=1), "bf16")
    for batch in (8, 32):
        prompts = [list(range(1, 65))] * batch
        gen = GenerationConfig(max_new_tokens=256, samples_per_prompt=1, progress=False,
                               engine="static")
        _, secs = _timed(lambda: generate(student, prompts, gen, seed=0), reps=2)
        report[f"rollout_b{batch}_tokens_per_s"] = batch * 256 / secs
    report.update(continuous_section(student))

    # 4. teacher scoring during the rollout (train/teacher_scoring.py DuringRollout's streams)
    teacher = _build(spec, par, weights, "bf16")
    prompts = [list(range(1, 65))] * 32
    gen = GenerationConfig(max_new_tokens=256, samples_per_prompt=1, progress=False,
                           micro_batch_size=8, engine="static")
    side = torch.cuda.Stream()

    def score_after():
        batch = generate(student, prompts, gen, seed=0)
        lp = forward_logprobs(teacher, batch.tokens, micro_batch_size=8, fused=True)
        torch.cuda.synchronize()
        return [lp[i:i + 8].cpu() for i in range(0, 32, 8)], batch

    def score_during():
        parts = []

        def hook(rows, part):
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                parts.append(forward_logprobs(teacher, part.tokens, micro_batch_size=8,
                                              fused=True))
        batch = generate(student, prompts, gen, seed=0, on_micro_batch=hook)
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        return [p.cpu() for p in parts], batch

    (after_parts, _), after_s = _timed(score_after, reps=2)
    (during_parts, _), during_s = _timed(score_during, reps=2)
    report["teacher_after_rollout_s"] = after_s
    report["teacher_during_rollout_s"] = during_s
    report["teacher_during_identical"] = all(
        torch.equal(a[:, :d.shape[1]], d) for a, d in zip(after_parts, during_parts))

    student = teacher = None  # free the GPU for section 5
    torch.cuda.empty_cache()

    # 5. the RL loop
    rl_section(report, out)

    (out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    print(f"RESULT gpu_check stream_identical={report['stream_w2_identical']} "
          f"stream_time_ratio={report['stream_time_ratio']:.3f} "
          f"bf16_vs_fp32_max_abs={report['bf16_vs_fp32_max_abs']:.3g} "
          f"rollout_b32_tokens_per_s={report['rollout_b32_tokens_per_s']:.0f} "
          f"teacher_during_over_after="
          f"{report['teacher_during_rollout_s'] / report['teacher_after_rollout_s']:.3f} "
          f"{_rl_result(report)}")
    return 0


def _rl_result(report: dict) -> str:
    parts = []
    for name in ("local", "te"):
        r = report.get(f"rl_{name}")
        if isinstance(r, dict) and "error" not in r:
            parts.append(f"rl_{name}_rollout_tokens_per_s={r['rollout_tokens_per_s']:.0f} "
                         f"rl_{name}_step_s={r['seconds_per_phase'].get('time/step_s', 0):.2f} "
                         f"rl_{name}_finite={r['losses_finite']}")
        elif r is not None:
            parts.append(f"rl_{name}=" + ("error" if isinstance(r, dict) else "skipped"))
    return " ".join(parts)


if __name__ == "__main__":
    sys.exit(main())
