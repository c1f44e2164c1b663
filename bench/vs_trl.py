"""Benchmark: one GRPO step of this project against one step of TRL's GRPOTrainer, same tiny Llama,
same prompts, group size, lengths and optimizer, on the same CPU cores.

    tools/trl_env.sh                      # once: TRL in its own venv, .venv-trl (see below)
    python -m bench.vs_trl [--quick]      # both sides; TRL runs as a subprocess of .venv-trl

Why a separate environment: TRL 1.x needs transformers 5, the project's `hf` extra pins
transformers < 5; TRL is never part of the default set-up.

The shared setup (written by this process into a temporary folder):
  model      a random LlamaForCausalLM (4 layers, hidden 256, 8 heads, 4 KV heads, ffn 768,
             vocab 4096), saved with save_pretrained; this project loads the same tensors into
             its megatron student (convert/layout.py)
  tokenizer  a word-level tokenizer whose word "tN" is id N, so the prompts (random ids, 16-32
             tokens) are exactly the same ids on both sides
  step       P prompts x G samples, N new tokens each (EOS suppressed: every response is N long),
             temperature 1, reward = share of even ids in the response (the same function on
             both sides), group-normalised advantages, GRPO's clipped surrogate (eps 0.2 / 0.28,
             sequence-mean of token-means), no KL (beta 0), Adam lr 1e-6 without weight decay,
             grad-norm clip 1.0, one optimizer step over all P x G rows, fp32, 1 thread
  this side  rollout/generate (KV cache) -> reward -> advantages -> old log-probs
             (models/forward.py) -> train/step.py forward_backward + optimizer_step, i.e. the
             phases rl_step runs, with micro-batches of 16 rows
  TRL side   GRPOTrainer (use_vllm False: transformers' generate inside the step), per-device
             batch P x G, num_generations G, steps_per_generation 1, num_iterations 1,
             loss_type "grpo"; its step time from a TrainerCallback (on_step_begin..on_step_end)
Differences a reader should know: with num_iterations 1, TRL does not run an old-policy pass
(the ratio is 1 by construction); this project always does (its ratio, TRRD's anchor and the
selection need it), so it does one forward pass more per step.

tokens/s = P x G x N generated tokens / step seconds; the median of `reps` steps after one
warm-up step on each side. Output: bench/results/vs_trl.json and, last,
    RESULT vs_trl speedup=<ours / trl tokens per second> ours_tok_s=<> trl_tok_s=<> target_met=<>
Target (issue 15): speedup >= 2.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
TRL_PYTHON = REPO / ".venv-trl" / "bin" / "python"
VOCAB = 4096
MODEL = dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=8,
             num_key_value_heads=4, max_position_embeddings=512)
LR, EPS_LOW, EPS_HIGH, CLIP = 1e-6, 0.2, 0.28, 1.0


def sizes(quick: bool) -> dict:
    return dict(prompts=4, group=8, new_tokens=32, reps=3) if quick else \
        dict(prompts=8, group=8, new_tokens=64, reps=3)


def prompt_ids(n: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(4, VOCAB, (int(k),), generator=g).tolist()
            for k in torch.randint(16, 33, (n,), generator=g)]


def reward_of(ids) -> float:
    """The shared reward: the share of even token ids in a response."""
    ids = list(ids)
    return sum(1 for t in ids if t % 2 == 0) / max(len(ids), 1)


# ----------------------------------------------------------------------------- shared setup
def write_setup(folder: Path, cfg: dict) -> None:
    """The model, tokenizer and prompts both sides read."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)
    hf = LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, tie_word_embeddings=False,
                                      rms_norm_eps=1e-5, rope_theta=10000.0, bos_token_id=1,
                                      eos_token_id=2, pad_token_id=0, **MODEL))
    hf.save_pretrained(folder / "model")
    vocab = {f"t{i}": i for i in range(VOCAB)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="t3"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="t0", bos_token="t1",
                                   eos_token="t2", unk_token="t3", padding_side="left")
    fast.save_pretrained(folder / "model")
    (folder / "setup.json").write_text(json.dumps({"prompt_ids": prompt_ids(cfg["prompts"]),
                                                   **cfg}))


# ----------------------------------------------------------------------------- this project
def run_ours(folder: Path, cfg: dict) -> dict:
    from safetensors.torch import load_file

    from rlad_megatron.data.advantages import ADVANTAGES
    from rlad_megatron.models.build import OptimizerSettings, build_student
    from rlad_megatron.models.forward import forward_logprobs
    from rlad_megatron.models.spec import ModelSpec
    from rlad_megatron.convert.layout import load_hf_tensors
    from rlad_megatron.data.batch import TrainBatch
    from rlad_megatron.rollout import GenerationConfig, generate
    from rlad_megatron.runtime import ParallelConfig, init_distributed, init_parallel
    from rlad_megatron.train.step import LossSpec, forward_backward, optimizer_step

    init_distributed(timeout_s=600)
    par = init_parallel(ParallelConfig(seed=0))
    spec = ModelSpec(arch="llama", num_layers=MODEL["num_hidden_layers"],
                     hidden_size=MODEL["hidden_size"], ffn_hidden_size=MODEL["intermediate_size"],
                     num_attention_heads=MODEL["num_attention_heads"],
                     num_query_groups=MODEL["num_key_value_heads"], vocab_size=VOCAB,
                     max_position_embeddings=MODEL["max_position_embeddings"], name="vs-trl")
    student = build_student(spec, par, OptimizerSettings(lr=LR, weight_decay=0.0, clip_grad=CLIP,
                                                         adam_beta2=0.999))
    weights = load_file(str(folder / "model" / "model.safetensors"))
    load_hf_tensors(student.chunks, weights.__getitem__, spec=spec, tp=1, tp_rank=0,
                    padded_vocab=student.padded_vocab_size)
    setup = json.loads((folder / "setup.json").read_text())
    gen = GenerationConfig(max_new_tokens=cfg["new_tokens"], temperature=1.0,
                           samples_per_prompt=cfg["group"], progress=False)
    loss = LossSpec("grpo", {"eps_low": EPS_LOW, "eps_high": EPS_HIGH})

    phases: list[dict] = []

    def step(i: int) -> float:
        start = time.perf_counter()
        rollout = generate(student, setup["prompt_ids"], gen, seed=i)
        generated = time.perf_counter()
        rewards = torch.tensor([reward_of(rollout.tokens[r, p:p + n].tolist()) for r, (p, n) in
                                enumerate(zip(rollout.prompt_lengths.tolist(),
                                              rollout.response_lengths.tolist()))])
        adv, _ = ADVANTAGES["grpo"](rewards, rollout.group_ids)
        scored = time.perf_counter()
        old = forward_logprobs(student, rollout.tokens, micro_batch_size=16)
        old_done = time.perf_counter()
        batch = TrainBatch.from_rollout(rollout, rewards=rewards, advantages=adv,
                                        old_logprobs=old)
        forward_backward(student, batch, loss, micro_batch_size=16)
        optimizer_step(student)
        end = time.perf_counter()
        phases.append({"rollout_s": generated - start, "reward_s": scored - generated,
                       "old_logprobs_s": old_done - scored, "update_s": end - old_done})
        return end - start

    times = [step(i) for i in range(cfg["reps"] + 1)][1:]
    return {"step_s": times, "phases": phases[1:]}


# ----------------------------------------------------------------------------- TRL
def run_trl(folder: Path, cfg: dict) -> dict:
    import trl
    import transformers
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    setup = json.loads((folder / "setup.json").read_text())
    tok = AutoTokenizer.from_pretrained(folder / "model")
    model = AutoModelForCausalLM.from_pretrained(folder / "model", dtype=torch.float32)
    data = Dataset.from_list([{"prompt": " ".join(f"t{i}" for i in ids)}
                              for ids in setup["prompt_ids"]] * (cfg["reps"] + 2))

    def reward(completions, completion_ids=None, **kwargs):
        return [reward_of(ids) for ids in completion_ids]

    rows = cfg["prompts"] * cfg["group"]
    args = GRPOConfig(
        output_dir=str(folder / "trl_out"), per_device_train_batch_size=rows,
        gradient_accumulation_steps=1, num_generations=cfg["group"], steps_per_generation=1,
        num_iterations=1, max_completion_length=cfg["new_tokens"],
        generation_kwargs={"min_new_tokens": cfg["new_tokens"]}, temperature=1.0, top_p=1.0,
        top_k=0, beta=0.0, epsilon=EPS_LOW, epsilon_high=EPS_HIGH, loss_type="grpo",
        scale_rewards="group", learning_rate=LR, weight_decay=0.0, adam_beta1=0.9,
        adam_beta2=0.999, adam_epsilon=1e-8, max_grad_norm=CLIP, lr_scheduler_type="constant",
        max_steps=cfg["reps"] + 1, logging_steps=1, report_to=[], save_strategy="no",
        use_cpu=True, bf16=False, fp16=False, shuffle_dataset=False, seed=0,
        disable_tqdm=True, dataloader_num_workers=0)
    times, begun = [], {}

    class Timer(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            begun["t"] = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            times.append(time.perf_counter() - begun["t"])

    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=data,
                          processing_class=tok, callbacks=[Timer()])
    trainer.train()
    settings = {k: getattr(args, k) for k in (
        "per_device_train_batch_size", "gradient_accumulation_steps", "num_generations",
        "steps_per_generation", "num_iterations", "max_completion_length", "loss_type",
        "beta", "epsilon", "epsilon_high", "scale_rewards", "learning_rate", "max_grad_norm")}
    return {"step_s": times[1:], "trl": trl.__version__, "transformers": transformers.__version__,
            "settings": settings}


# ----------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer prompts and tokens")
    ap.add_argument("--side", choices=("both", "trl"), default="both")
    ap.add_argument("--workdir", help="the shared setup (--side trl)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = sizes(args.quick)
    if args.side == "trl":
        print(json.dumps(run_trl(Path(args.workdir), cfg)))
        return
    if not TRL_PYTHON.exists():
        sys.exit(f"bench.vs_trl: {TRL_PYTHON} is missing; create it with tools/trl_env.sh")
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="rlad_vs_trl_") as tmp:
        folder = Path(tmp)
        write_setup(folder, cfg)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO),
               "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}
        proc = subprocess.run([str(TRL_PYTHON), "-m", "bench.vs_trl", "--side", "trl",
                               "--workdir", tmp] + (["--quick"] if args.quick else []),
                              cwd=REPO, env=env, capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"bench.vs_trl: the TRL side failed:\n{proc.stderr[-4000:]}")
        theirs = json.loads(proc.stdout.strip().splitlines()[-1])
        ours = run_ours(folder, cfg)
    tokens = cfg["prompts"] * cfg["group"] * cfg["new_tokens"]
    rows = {}
    for name, side in (("ours", ours), ("trl", theirs)):
        med = statistics.median(side["step_s"])
        rows[name] = {"step_s": side["step_s"], "median_s": med, "min_s": min(side["step_s"]),
                      "tok_s": tokens / med}
    rows["ours"]["phases"] = ours["phases"]
    speedup = rows["ours"]["tok_s"] / rows["trl"]["tok_s"]
    result = {"mode": "quick" if args.quick else "full", "config": cfg, "model": MODEL,
              "vocab": VOCAB, "tokens_per_step": tokens, "ours": rows["ours"],
              "trl": {**rows["trl"], "version": theirs["trl"],
                      "transformers": theirs["transformers"], "settings": theirs["settings"]},
              "speedup": speedup, "target_met": speedup >= 2.0,
              "env": {"torch": torch.__version__, "threads": 1, "cpus": os.cpu_count(),
                      "machine": platform.machine(), "loadavg_at_end": os.getloadavg()},
              "wall_s": time.perf_counter() - began}
    from bench.report import write_result

    write_result("vs_trl", result["mode"], result)
    for name in ("ours", "trl"):
        r = rows[name]
        print(f"{name}: median step {r['median_s']:.2f} s, {r['tok_s']:.0f} generated tok/s")
    last = ours["phases"][-1]
    print("ours, last step: " + ", ".join(f"{k} {v:.2f}" for k, v in last.items()))
    print(f"RESULT vs_trl speedup={speedup:.2f} ours_tok_s={rows['ours']['tok_s']:.0f} "
          f"trl_tok_s={rows['trl']['tok_s']:.0f} target_met={result['target_met']}")


if __name__ == "__main__":
    main()
