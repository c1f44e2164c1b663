"""Benchmark: rollouts of long-tailed lengths, the static engine against continuous batching
(rollout.engine), and against transformers' generate, on CPU.

    python -m bench.skewed [--quick]

Workload (like reasoning rollouts: most answers stop early, a few run to the limit): R rows of
32-token prompts, at most 256 new tokens, sampled at temperature 1 from bench/rollout.py's model
(4 layers, hidden 256, 8 heads, vocabulary 8192, random weights). The lengths come from the
model itself: EOS_IDS (88 ids of the vocabulary) end a row, so each token stops a row with
probability about 1%, a geometric tail: median about 64-80 new tokens (a quarter of the
maximum), about 5% of the rows reach 256.
  static       generation micro-batches of 32 rows, each run until its longest row stops
  continuous   at most 32 rows in flight; a stopped row's slot goes to the next waiting row
  transformers LlamaForCausalLM.generate (4.57, KV cache) in batches of 32, the same EOS ids
Beside it the uniform workload (no EOS: every row makes 256 tokens, 32 rows): what the
continuous engine's bookkeeping and paged attention cost when nothing is freed.
tok/s = generated tokens (response lengths summed) / wall time of the call. Static and
continuous sample the same tokens (checked: the same response lengths); transformers draws its
own samples (another sampler), so its lengths differ by chance, not by distribution.

Why its own module: the skewed workload takes longer than bench/rollout.py's 60 s quick budget.
Output: bench/results/skewed.json and, last,
    RESULT skewed continuous_over_static=<> skewed_vs_hf=<> uniform_continuous_over_static=<>
Targets (issue 24): continuous_over_static >= 1.6, skewed_vs_hf >= 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import time

import torch

from bench.rollout import build_model

EOS_IDS = list(range(100, 188))
LIVE, PROMPT, NEW = 32, 32, 256


def workload(rows: int, vocab: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(200, vocab, (PROMPT,), generator=g).tolist() for _ in range(rows)]


def ours(model, prompts, engine: str, eos) -> dict:
    from rlad_megatron.rollout import GenerationConfig, generate_detailed

    cfg = GenerationConfig(max_new_tokens=NEW, temperature=1.0, eos_token_id=eos, progress=False,
                           micro_batch_size=LIVE, engine="static")
    if engine == "continuous":
        cfg = dataclasses.replace(cfg, engine="continuous", max_live_rows=LIVE, kv_block_size=64)
    start = time.perf_counter()
    out = generate_detailed(model, prompts, cfg, seed=1)
    wall = time.perf_counter() - start
    lengths = out.batch.response_lengths
    return {"wall_s": wall, "tok_s": float(lengths.sum()) / wall, "lengths": lengths.tolist(),
            "engine_steps": out.steps}


def transformers(hf, prompts, eos) -> dict:
    torch.manual_seed(1)
    total, start = 0, time.perf_counter()
    for lo in range(0, len(prompts), LIVE):
        ids = torch.tensor(prompts[lo:lo + LIVE])  # equal lengths: no padding
        with torch.no_grad():
            out = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True,
                              temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=NEW,
                              eos_token_id=eos, pad_token_id=0, use_cache=True)
        new = out[:, PROMPT:]
        ended = torch.isin(new, torch.tensor(eos or [-1]))
        first = torch.where(ended.any(1), ended.float().argmax(1) + 1, new.shape[1])
        total += int(first.sum())
    wall = time.perf_counter() - start
    return {"wall_s": wall, "tok_s": total / wall, "tokens": total}


def summary(lengths: list[int]) -> dict:
    t = torch.tensor(lengths, dtype=torch.float64)
    return {"median": float(t.median()), "mean": float(t.mean()), "max": int(t.max()),
            "share_at_max": float((t == NEW).double().mean()),
            "slot_utilisation_static": float(t.sum() / (len(lengths) * t.max()))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="64 skewed rows (full: 128)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    began = time.perf_counter()
    model, hf = build_model()
    rows = 64 if args.quick else 128
    vocab = model.spec.vocab_size
    skewed, uniform = workload(rows, vocab), workload(LIVE, vocab)
    ours(model, skewed[:2], "continuous", EOS_IDS)  # warm-up
    result = {"skewed": {}, "uniform": {}}
    for name, prompts, eos in (("skewed", skewed, EOS_IDS), ("uniform", uniform, None)):
        for engine in ("static", "continuous"):
            result[name][engine] = ours(model, prompts, engine, eos)
            print(f"{name:8s} {engine:10s} {result[name][engine]['tok_s']:8.1f} tok/s "
                  f"({result[name][engine]['wall_s']:.1f} s)", flush=True)
        if hf is not None and name == "skewed":
            result[name]["transformers"] = transformers(hf, prompts, eos)
            print(f"{name:8s} transformers {result[name]['transformers']['tok_s']:8.1f} tok/s",
                  flush=True)
    s = result["skewed"]
    same = s["static"]["lengths"] == s["continuous"]["lengths"]
    ratios = {"continuous_over_static": s["continuous"]["tok_s"] / s["static"]["tok_s"],
              "skewed_vs_hf": (s["continuous"]["tok_s"] / s["transformers"]["tok_s"]
                               if "transformers" in s else float("nan")),
              "skewed_static_vs_hf": (s["static"]["tok_s"] / s["transformers"]["tok_s"]
                                      if "transformers" in s else float("nan")),
              "uniform_continuous_over_static": (result["uniform"]["continuous"]["tok_s"] /
                                                 result["uniform"]["static"]["tok_s"])}
    report = {"mode": "quick" if args.quick else "full", "rows": rows, "live_rows": LIVE,
              "prompt_tokens": PROMPT, "max_new_tokens": NEW, "eos_ids": len(EOS_IDS),
              "same_lengths_static_continuous": same, "lengths": summary(
                  s["static"]["lengths"]), **ratios,
              "target": {"continuous_over_static": ">= 1.6", "skewed_vs_hf": ">= 2"},
              "results": {k: {e: {kk: vv for kk, vv in r.items() if kk != "lengths"}
                              for e, r in v.items()} for k, v in result.items()},
              "env": {"torch": torch.__version__, "python": platform.python_version(),
                      "cpus": os.cpu_count(), "loadavg_at_end": os.getloadavg()},
              "wall_s": time.perf_counter() - began}
    from bench.report import write_result
    path = write_result("skewed", report["mode"], report)
    print(f"lengths: {report['lengths']}; static and continuous lengths equal: {same}")
    print(f"wrote {path} ({report['wall_s']:.0f} s)")
    print(f"RESULT skewed continuous_over_static={ratios['continuous_over_static']:.2f} "
          f"skewed_vs_hf={ratios['skewed_vs_hf']:.2f} "
          f"uniform_continuous_over_static={ratios['uniform_continuous_over_static']:.2f}")


if __name__ == "__main__":
    main()
