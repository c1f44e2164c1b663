"""Benchmark: vocab-parallel token log-probs, ours against two baselines, TP=2, forward + backward.

    python -m bench.logprob [--quick]

Spawns its own 2 ranks (gloo, one thread each; megatron TP=2 through rlad_megatron.runtime) and,
for V in {32000, 151936} and several sequence lengths, times and measures side by side:

    ours        rlad_megatron.ops.token_logprobs(logits [b, s, V/2], tokens, tp_group)
    allgather   megatron's gather_from_tensor_model_parallel_region (the full [b, s, V]) ->
                log_softmax -> gather the tokens
    mcore       megatron.core.tensor_parallel.vocab_parallel_cross_entropy(logits [s, b, V/2]),
                log-prob = -loss (it works in place on the logits it is given: fp32 logits become
                the softmax and then the gradient, which autograd copies into the leaf's .grad;
                bf16 logits are first upcast to a full fp32 copy)

each followed by backward with the same random [b, s] output gradient, on b = 2 and
s in {64, 128} (--quick, fp32) or s in {256, 512, 1024} (fp32 and bf16). Every run starts from a
fresh copy of the same local logits (made outside the measurement); the methods' log-probs are
cross-checked (max_abs_diff_ours_vs_*).

Measurements (per rank, the worse rank reported):
    time_s       wall time of forward + backward, the best of the repeats (the machine is shared;
                 the median and the process CPU time, cpu_s, are recorded too)
    peak_extra   peak bytes of tensors created during forward + backward that are alive at once
                 (the logits' gradient included), over the local logits' bytes: `mem_ratio`.
                 CUDA: torch.cuda.max_memory_allocated. CPU: a TorchDispatchMode that adds the
                 bytes of every new storage an op returns and subtracts them when the storage is
                 freed (weakref.finalize); scratch memory private to one kernel is not seen.
    fused       peak extra bytes of rlad_megatron.ops.fused_token_logprobs (hidden [s, b, h] ->
                log-probs, no grad) at two sequence lengths; fused_mem_growth = long / short.

Output: bench/results/logprob.json, under "full" or "quick" (bench.report: a quick run keeps the
full one): all rows + environment; and, as the last line,
    RESULT logprob mem_ratio=<worst case of ours> time_ratio_vs_mcore=<sum of ours' times over
    all cases / sum of mcore's> fused_mem_growth=<long / short>
(the JSON also has the per-case time ratios, their worst case and geometric mean, and CPU times).
Targets (reported, not asserted): mem_ratio <= 1.25, time_ratio_vs_mcore <= 1.0,
fused_mem_growth ~ 1.0.
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import time
import weakref

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from bench.report import write_result

TP = 2
VOCABS = (32000, 151936)


class StorageTracker(TorchDispatchMode):
    """Live bytes of the storages created by ops run under it, and their peak."""

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._tracked: set[int] = set()

    def _release(self, nbytes: int, key: int) -> None:
        self.live -= nbytes
        self._tracked.discard(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = {t.untyped_storage().data_ptr()
                  for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key, nbytes = storage.data_ptr(), storage.nbytes()
            if nbytes == 0 or key in inputs or key in self._tracked:
                continue  # a view, an in-place or out= result, or already counted
            self._tracked.add(key)
            self.live += nbytes
            self.peak = max(self.peak, self.live)
            weakref.finalize(storage, self._release, nbytes, key)
        return out


def measure_peak(fn) -> int:
    """Peak extra bytes allocated while fn() runs."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    with StorageTracker() as tracker:
        fn()
    return tracker.peak


def timed(fn, group) -> tuple[float, float]:
    """(wall, process CPU) seconds of fn(), started together on every rank."""
    dist.barrier(group)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - wall, time.process_time() - cpu


def methods(group, tokens_bs, grad_bs):
    """name -> (layout of its logits, fn(logits): forward + backward, returning the log-probs)."""
    from megatron.core.tensor_parallel import vocab_parallel_cross_entropy
    from megatron.core.tensor_parallel.mappings import gather_from_tensor_model_parallel_region

    from rlad_megatron.ops import token_logprobs

    tokens_sb, grad_sb = tokens_bs.t().contiguous(), grad_bs.t().contiguous()

    def ours(logits):
        lp = token_logprobs(logits, tokens_bs, group)
        lp.backward(grad_bs)
        return lp.detach()

    def allgather(logits):
        full = gather_from_tensor_model_parallel_region(logits)
        lp = torch.log_softmax(full.float(), dim=-1)
        lp = lp.gather(-1, tokens_bs.unsqueeze(-1)).squeeze(-1)
        lp.backward(grad_bs)
        return lp.detach()

    def mcore(logits):
        loss = vocab_parallel_cross_entropy(logits, tokens_sb)
        loss.backward(-grad_sb)
        return -loss.detach().t()

    return {"ours": ("bsv", ours), "allgather": ("bsv", allgather), "mcore": ("sbv", mcore)}


def worst(value: float, group, op=dist.ReduceOp.MAX) -> float:
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t, op=op, group=group)
    return t.item()


def bench_case(group, rank, vocab, batch, seq, dtype, repeats):
    local = vocab // TP
    gen = torch.Generator().manual_seed(1000 * rank + seq)
    master_bsv = (torch.randn(batch, seq, local, generator=gen) * 2).to(dtype)
    gen.manual_seed(seq)  # tokens and output gradient: the same on both ranks
    tokens = torch.randint(0, vocab, (batch, seq), generator=gen)
    grad = torch.randn(batch, seq, generator=gen)
    masters = {"bsv": master_bsv, "sbv": master_bsv.transpose(0, 1).contiguous()}
    local_bytes = master_bsv.nbytes
    row = {"vocab": vocab, "tp": TP, "batch": batch, "seq": seq, "dtype": str(dtype).split(".")[-1],
           "local_logits_bytes": local_bytes}
    results, times = {}, {}
    runs = methods(group, tokens, grad)
    fresh = {name: (lambda layout=layout: masters[layout].clone().requires_grad_(True))
             for name, (layout, _) in runs.items()}
    for name, (_, fn) in runs.items():
        logits = fresh[name]()
        peak = measure_peak(lambda x=logits: results.__setitem__(name, fn(x)))
        row[name] = {"peak_extra_bytes": int(worst(peak, group)),
                     "mem_ratio": worst(peak / local_bytes, group)}
        del logits
    # rounds of one run per method, so that load from other processes hits them alike (the
    # memory run above was the warm-up)
    for _ in range(repeats):
        for name, (_, fn) in runs.items():
            logits = fresh[name]()
            times.setdefault(name, []).append(timed(lambda x=logits: fn(x), group))
            del logits
    for name in runs:
        walls, cpus = zip(*times[name])
        row[name].update(time_s=worst(min(walls), group),
                         time_median_s=worst(statistics.median(walls), group),
                         cpu_s=worst(min(cpus), group))
    for name in ("allgather", "mcore"):
        row[f"max_abs_diff_ours_vs_{name}"] = worst(
            (results["ours"] - results[name]).abs().max().item(), group)
    row["time_ratio_vs_mcore"] = row["ours"]["time_s"] / row["mcore"]["time_s"]
    row["cpu_ratio_vs_mcore"] = row["ours"]["cpu_s"] / row["mcore"]["cpu_s"]
    row["time_ratio_vs_allgather"] = row["ours"]["time_s"] / row["allgather"]["time_s"]
    return row


def bench_fused(group, rank, vocab, batch, hidden_size, seqs):
    from rlad_megatron.ops import fused_token_logprobs

    local = vocab // TP
    gen = torch.Generator().manual_seed(7 + rank)
    weight = torch.randn(local, hidden_size, generator=gen) / hidden_size ** 0.5
    rows = []
    for seq in seqs:
        hidden = torch.randn(seq, batch, hidden_size, generator=gen)
        gen.manual_seed(seq)
        tokens = torch.randint(0, vocab, (batch, seq), generator=gen)
        peak = measure_peak(lambda: fused_token_logprobs(hidden, weight, tokens, group))
        t, _ = timed(lambda: fused_token_logprobs(hidden, weight, tokens, group), group)
        rows.append({"vocab": vocab, "batch": batch, "hidden": hidden_size, "seq": seq,
                     "peak_extra_bytes": int(worst(peak, group)),
                     "unfused_local_logits_bytes": batch * seq * local * 4,
                     "time_s": worst(t, group)})
    return {"rows": rows, "growth": rows[-1]["peak_extra_bytes"] / rows[0]["peak_extra_bytes"]}


def plan(quick: bool):
    if quick:
        return {"batch": 2, "seqs": (64, 128), "dtypes": (torch.float32,), "repeats": 3,
                "fused": {"vocab": 32000, "batch": 2, "hidden": 128, "seqs": (128, 512)}}
    return {"batch": 2, "seqs": (256, 512, 1024), "dtypes": (torch.float32, torch.bfloat16),
            "repeats": 5, "fused": {"vocab": 32000, "batch": 2, "hidden": 256, "seqs": (512, 2048)}}


def worker(rank: int, port: int, quick: bool, out: dict, started: float) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(TP), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from rlad_megatron.runtime import ParallelConfig, init_distributed, init_parallel

    init_distributed(timeout_s=600)
    group = init_parallel(ParallelConfig(tensor=TP)).tp_group
    cfg = plan(quick)
    rows = []
    if rank == 0:
        print(f"ranks started in {time.perf_counter() - started:.1f} s", flush=True)
    for dtype in cfg["dtypes"]:
        for vocab in VOCABS:
            for seq in cfg["seqs"]:
                started = time.perf_counter()
                row = bench_case(group, rank, vocab, cfg["batch"], seq, dtype, cfg["repeats"])
                row["case_wall_s"] = time.perf_counter() - started
                rows.append(row)
                if rank == 0:
                    print(f"V={vocab} s={seq} {row['dtype']}: " + "  ".join(
                        f"{m} {row[m]['time_s'] * 1e3:.0f} ms x{row[m]['mem_ratio']:.2f}"
                        for m in ("ours", "allgather", "mcore"))
                          + f"  ({row['case_wall_s']:.1f} s)", flush=True)
    f = cfg["fused"]
    fused = bench_fused(group, rank, f["vocab"], f["batch"], f["hidden"], f["seqs"])
    if rank == 0:
        out["rows"], out["fused"] = rows, fused
    dist.barrier()
    dist.destroy_process_group()


def environment() -> dict:
    from importlib.metadata import version

    return {"torch": torch.__version__, "megatron_core": version("megatron-core"),
            "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "threads_per_rank": 1, "cuda": torch.cuda.is_available(), "backend": "gloo",
            "tp": TP, "platform": platform.platform()}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(rank: int, port: int, quick: bool, queue, started: float) -> None:
    out: dict = {}
    worker(rank, port, quick, out, started)
    if rank == 0:
        queue.put(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter cases (< 60 s)")
    args = parser.parse_args()
    start = time.perf_counter()
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    mp.start_processes(_run, args=(_free_port(), args.quick, queue, start), nprocs=TP, join=True,
                       start_method="spawn")
    out = queue.get()
    rows, fused = out["rows"], out["fused"]
    total = {key: {m: sum(r[m][key] for r in rows) for m in ("ours", "mcore")}
             for key in ("time_s", "cpu_s")}
    summary = {
        "mem_ratio": max(r["ours"]["mem_ratio"] for r in rows),
        "time_ratio_vs_mcore": total["time_s"]["ours"] / total["time_s"]["mcore"],
        "time_ratio_vs_mcore_worst_case": max(r["time_ratio_vs_mcore"] for r in rows),
        "time_ratio_vs_mcore_geomean": statistics.geometric_mean(
            [r["time_ratio_vs_mcore"] for r in rows]),
        "cpu_ratio_vs_mcore": total["cpu_s"]["ours"] / total["cpu_s"]["mcore"],
        "fused_mem_growth": fused["growth"],
    }
    report = {"mode": "quick" if args.quick else "full", "summary": summary,
              "targets": {"mem_ratio": "<= 1.25", "time_ratio_vs_mcore": "<= 1.0",
                          "fused_mem_growth": "~ 1.0"},
              "rows": rows, "fused": fused, "environment": environment(),
              "wall_s": time.perf_counter() - start}
    path = write_result("logprob", report["mode"], report)
    print("fused teacher path: " + "  ".join(
        f"s={r['seq']} peak {r['peak_extra_bytes'] / 2**20:.1f} MiB" for r in fused["rows"]))
    print(f"wrote {path} ({report['wall_s']:.0f} s)")
    print(f"RESULT logprob mem_ratio={summary['mem_ratio']:.3f} "
          f"time_ratio_vs_mcore={summary['time_ratio_vs_mcore']:.3f} "
          f"fused_mem_growth={summary['fused_mem_growth']:.3f}")


if __name__ == "__main__":
    main()
