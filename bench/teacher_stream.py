"""Benchmark: teacher scoring streamed from host memory against the resident teacher, side by
side, at two batch sizes.

    python -m bench.teacher_stream [--quick]

Both variants score the same tokens with the same weights (single process, fp32, 1 thread):

    resident  forward_logprobs(teacher, fused=True): megatron's schedule, every layer resident
    streamed  streamed_logprobs(stream_teacher(teacher, window=2)): layers in host memory, copied
              to the device one window at a time, layer-major over the micro-batches

Reported per batch size: the best of N scoring times, the peak teacher parameter bytes on the
device (resident: all of them; streamed: the Residency tracker's peak, what a GPU would hold),
the copy time, and whether the log-probs are bit-identical. Targets: resident bytes
<= window x largest layer + head, reported as a ratio to the whole teacher; time within 10% of
resident where a layer's compute exceeds its copy, which on a GPU the side-stream copy can hide.
On CPU "host" and "device" are the same memory, the copy is a memcpy that nothing overlaps,
so the time ratio here is reported as measured (it is the copy's share, not a GPU prediction).

Output: bench/results/teacher_stream.json (under "full" or "quick"), and as the last line
    RESULT teacher_stream time_ratio=<streamed/resident, larger batch> resident_ratio=<...> ...
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from bench.report import write_result


def _sizes(quick: bool) -> dict:
    if quick:
        return dict(teacher=dict(num_layers=8, hidden_size=256, ffn_hidden_size=768),
                    batches=(8, 32), seq=96, micro_batch=8, reps=3)
    return dict(teacher=dict(num_layers=12, hidden_size=512, ffn_hidden_size=1536),
                batches=(16, 64), seq=192, micro_batch=8, reps=5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    from rlad_megatron.convert.init_weights import random_hf_weights
    from rlad_megatron.convert.layout import load_hf_tensors
    from rlad_megatron.models.build import build_teacher
    from rlad_megatron.models.forward import forward_logprobs
    from rlad_megatron.models.spec import get_preset
    from rlad_megatron.models.teacher_stream import stream_teacher, streamed_logprobs
    from rlad_megatron.runtime import ParallelConfig, init_distributed, init_parallel

    cfg = _sizes(args.quick)
    init_distributed(timeout_s=600)
    par = init_parallel(ParallelConfig(seed=0))
    spec = get_preset("tiny-llama", vocab_size=4096, num_attention_heads=8, num_query_groups=4,
                      max_position_embeddings=512, init_method_std=0.05, name="bench-teacher",
                      **cfg["teacher"])
    weights = random_hf_weights(spec, seed=2)
    models = {}
    for name in ("resident", "streamed"):
        model = build_teacher(spec, par)
        load_hf_tensors(model.chunks, weights.__getitem__, spec=spec, tp=1, tp_rank=0,
                        padded_vocab=model.padded_vocab_size)
        models[name] = model
    whole = models["resident"].parameter_bytes()
    teacher = stream_teacher(models["streamed"], window=2)
    head = teacher.residency.current()
    largest_layer = max(s.nbytes for s in teacher.window.stores)
    bound = 2 * largest_layer + head

    g = torch.Generator().manual_seed(0)
    rows = []
    for batch in cfg["batches"]:
        tokens = torch.randint(0, spec.vocab_size, (batch, cfg["seq"]), generator=g)
        times = {"resident": [], "streamed": []}
        transfer = []
        out = {}
        for _ in range(cfg["reps"] + 1):  # the first round warms up
            t = time.perf_counter()
            out["resident"] = forward_logprobs(models["resident"], tokens,
                                               micro_batch_size=cfg["micro_batch"], fused=True)
            times["resident"].append(time.perf_counter() - t)
            t = time.perf_counter()
            out["streamed"] = streamed_logprobs(teacher, tokens,
                                                micro_batch_size=cfg["micro_batch"])
            times["streamed"].append(time.perf_counter() - t)
            transfer.append(teacher.residency.transfer_s)
        best = {k: min(v[1:]) for k, v in times.items()}
        rows.append({
            "batch": batch, "seq": cfg["seq"], "resident_s": best["resident"],
            "streamed_s": best["streamed"], "time_ratio": best["streamed"] / best["resident"],
            "transfer_s": min(transfer[1:]),
            "resident_peak_bytes": whole, "streamed_peak_bytes": teacher.residency.peak,
            "identical": bool(torch.equal(out["resident"], out["streamed"])),
        })
        r = rows[-1]
        print(f"batch {batch} x {cfg['seq']}: resident {r['resident_s']:.3f}s, streamed "
              f"{r['streamed_s']:.3f}s (copies {r['transfer_s']:.3f}s), ratio "
              f"{r['time_ratio']:.3f}; device bytes {whole} -> {r['streamed_peak_bytes']}; "
              f"identical={r['identical']}")

    peak = max(r["streamed_peak_bytes"] for r in rows)
    result = {
        "mode": "quick" if args.quick else "full", "config": cfg,
        "teacher_params": models["resident"].parameter_count(), "teacher_bytes": whole,
        "head_bytes": head, "largest_layer_bytes": largest_layer, "window": 2,
        "resident_bound_bytes": bound, "rows": rows,
        "resident_ratio": peak / whole, "time_ratio": rows[-1]["time_ratio"],
        "bound_met": peak <= bound, "identical": all(r["identical"] for r in rows),
        "env": {"torch": torch.__version__, "cpu_count": os.cpu_count(),
                "machine": platform.machine(), "device": "cpu"},
    }
    write_result("teacher_stream", result["mode"], result)
    print(f"RESULT teacher_stream time_ratio={result['time_ratio']:.3f} "
          f"resident_ratio={result['resident_ratio']:.3f} bound_met={result['bound_met']} "
          f"identical={result['identical']}")


if __name__ == "__main__":
    main()
