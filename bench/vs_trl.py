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
  tokenizer  a word-level tokenizer whose word "tN" is id N (4 <= N < 4096; the special
             tokens are "<pad>" "<s>" "</s>" "<unk>" at ids 0-3, not prefixes of any word), so
             the prompts (random ids 4..4095, 16-32 tokens) are exactly the same ids on both sides
  step       P prompts x G samples, N new tokens each (EOS suppressed: every response is N long),
             temperature 1, reward = share of even ids in the response (the same function on
             both sides), group-normalised advantages, GRPO's clipped surrogate (eps 0.2 / 0.28,
             sequence-mean of token-means), no KL (beta 0), Adam lr 1e-6 without weight decay,
             grad-norm clip 1.0, one optimizer step over all P x G rows, fp32, 1 thread
  this side  rollout/generate (KV cache; --engine: rollout.engine, default continuous, the
             product's default; every response runs to N tokens here, the continuous engine's
             worst case, and measured within 2% of --engine static) -> reward -> advantages
             -> train/step.py
             forward_backward + optimizer_step on-policy (no old-log-prob pass: the loss reads
             its own forward's detached log-probs, config/on_policy.py), i.e. the phases rl_step
             runs at train.mini_batches=1, with micro-batches of 16 rows (8 and 64 were no
             faster)
  TRL side   GRPOTrainer (use_vllm False: transformers' generate inside the step), per-device
             batch P x G, num_generations G, steps_per_generation 1, num_iterations 1,
             loss_type "grpo"; its step time from a TrainerCallback (on_step_begin..on_step_end),
             its generate and its _generate_and_score_completions timed inside the step
Checked on every run: both sides' models give the same log-probs on prompt 0 (same weights);
the prompts TRL hands to generate are the shared ids, G times each; every TRL completion is
new_tokens long. (Before these checks, special tokens named "t0".."t3" split TRL's prompts,
"t123" -> "t1" "<unk>", making them ~1.8x longer: the speedups 1.1-1.4 first reported for this
benchmark were that artefact.)
Differences a reader should know: with num_iterations 1, TRL does not run an old-policy pass
(the ratio is 1 by construction); neither does this project's on-policy step
(before, it ran one forward pass more per step: results up to then have old_logprobs_s > 0);
`speedup_without_old_logprobs` is now the same as `speedup` (old_logprobs_s is 0). TRL's
generate is transformers 5's, which
on this model is about 1.5x faster than transformers 4.57's (the version the project's `hf`
extra installs, and the one bench/rollout.py's vs_hf compares against); this project's KV-cached
generate draws float64 Gumbel noise from a counter hash over the vocabulary (ops/sampling.py),
TRL's torch.multinomial.

tokens/s = P x G x N generated tokens / step seconds; the median of `reps` steps after one
warm-up step on each side (the best step too: tok_s_best, speedup_best), pooled over `rounds`
(default 2) that alternate the sides: TRL's reps steps (a fresh subprocess, with its own warm-up
step), then reps of ours (one model, warmed up once), so that the load of a shared machine
drifts over both. `make bench-vs-trl` creates .venv-trl first.
Output: bench/results/vs_trl.json and, last,
    RESULT vs_trl speedup=<ours / trl tokens per second> ours_tok_s=<> trl_tok_s=<> target_met=<>
Target: speedup >= 2.
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

from bench.report import timed_into

REPO = Path(__file__).resolve().parents[1]
TRL_PYTHON = REPO / ".venv-trl" / "bin" / "python"
VOCAB = 4096
MODEL = dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=8,
             num_key_value_heads=4, max_position_embeddings=512)
LR, EPS_LOW, EPS_HIGH, CLIP = 1e-6, 0.2, 0.28, 1.0


def sizes(quick: bool) -> dict:
    return dict(prompts=4, group=8, new_tokens=32, reps=3, micro_batch=16) if quick else \
        dict(prompts=8, group=8, new_tokens=64, reps=3, micro_batch=16)


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
    # the special tokens must not be prefixes of words: added tokens are matched inside words
    # ("t1" would split "t123" into "t1" "23")
    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    vocab = {**{w: i for i, w in enumerate(specials)}, **{f"t{i}": i for i in range(4, VOCAB)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>", unk_token="<unk>", padding_side="left")
    fast.save_pretrained(folder / "model")
    (folder / "setup.json").write_text(json.dumps({"prompt_ids": prompt_ids(cfg["prompts"]),
                                                   **cfg}))


# ----------------------------------------------------------------------------- this project
def build_ours(folder: Path, cfg: dict):
    """This side's model from the shared setup; returns (step, info): step(i) runs one RL step
    with sampling seed i and returns (seconds, phase seconds)."""
    from safetensors.torch import load_file

    from rlad_megatron.data.advantages import ADVANTAGES
    from rlad_megatron.models.build import OptimizerSettings, build_student
    from rlad_megatron.models.forward import forward_logprobs
    from rlad_megatron.models.spec import ModelSpec
    from rlad_megatron.convert.layout import load_hf_tensors
    from rlad_megatron.data.batch import TrainBatch
    from rlad_megatron.rollout import GenerationConfig, generate
    from rlad_megatron.runtime import ParallelConfig, init_distributed, init_parallel
    from rlad_megatron.config.algorithms import GRPOLossConfig
    from rlad_megatron.train.step import forward_backward, optimizer_step

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
                           samples_per_prompt=cfg["group"], progress=False,
                           engine=cfg.get("engine", "continuous"))
    loss = GRPOLossConfig(eps_low=EPS_LOW, eps_high=EPS_HIGH).build(step=1)

    ids = torch.tensor([setup["prompt_ids"][0]])
    check_lp = forward_logprobs(student, ids, micro_batch_size=1)[0, 1:]
    def step(i: int) -> tuple[float, dict]:
        start = time.perf_counter()
        rollout = generate(student, setup["prompt_ids"], gen, seed=i)
        generated = time.perf_counter()
        rewards = torch.tensor([reward_of(rollout.tokens[r, p:p + n].tolist()) for r, (p, n) in
                                enumerate(zip(rollout.prompt_lengths.tolist(),
                                              rollout.response_lengths.tolist()))])
        adv, _ = ADVANTAGES["grpo"](rewards, rollout.group_ids)
        scored = time.perf_counter()
        # on-policy (config/on_policy.py, what rl_step does at train.mini_batches=1): no
        # old-policy pass, the loss reads its own forward's detached log-probs
        old_done = time.perf_counter()
        batch = TrainBatch.from_rollout(rollout, rewards=rewards, advantages=adv,
                                        old_logprobs=None)
        forward_backward(student, batch, loss, micro_batch_size=cfg["micro_batch"])
        optimizer_step(student)
        end = time.perf_counter()
        return end - start, {"rollout_s": generated - start, "reward_s": scored - generated,
                             "old_logprobs_s": old_done - scored, "update_s": end - old_done}

    return step, {"prompt0_logprobs": check_lp.tolist(), "threads": torch.get_num_threads()}


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
    with torch.no_grad():  # weight check: the log-probs of prompt 0, before any update
        ids = torch.tensor([setup["prompt_ids"][0]])
        logits = model(input_ids=ids).logits.float()
        check_lp = torch.log_softmax(logits[0, :-1], -1).gather(-1, ids[0, 1:, None])[:, 0]
    data = Dataset.from_list([{"prompt": " ".join(f"t{i}" for i in ids)}
                              for ids in setup["prompt_ids"]] * (cfg["reps"] + 2))

    def reward(completions, completion_ids=None, **kwargs):
        lengths = {len(ids) for ids in completion_ids}
        if lengths != {cfg["new_tokens"]}:  # EOS must not cut a response: equal lengths both sides
            raise SystemExit(f"TRL side: completion lengths {sorted(lengths)}")
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

    spent = {"generate_s": 0.0, "generate_and_score_s": 0.0}
    phases: list[dict] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            spent.update(generate_s=0.0, generate_and_score_s=0.0)
            begun["t"] = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            step_s = time.perf_counter() - begun["t"]
            times.append(step_s)
            phases.append({"generate_s": spent["generate_s"],
                           "rest_of_generate_and_score_s": spent["generate_and_score_s"]
                           - spent["generate_s"],
                           "update_s": step_s - spent["generate_and_score_s"]})

    # transformers' generate, and TRL's whole rollout phase (tokenise, generate, reward,
    # advantages; no old log-prob pass at num_iterations 1), timed inside the step
    seen: list[list[int]] = []

    def generate(*a, input_ids=None, attention_mask=None, **kw):
        if not seen:  # the prompts TRL feeds generate, padding stripped
            seen.extend(ids[m.bool()].tolist() for ids, m in zip(input_ids, attention_mask))
        return plain_generate(*a, input_ids=input_ids, attention_mask=attention_mask, **kw)

    plain_generate = model.generate
    model.generate = timed_into(spent, "generate_s", generate)
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=data,
                          processing_class=tok, callbacks=[Timer()])
    trainer._generate_and_score_completions = timed_into(
        spent, "generate_and_score_s", trainer._generate_and_score_completions)
    trainer.train()
    settings = {k: getattr(args, k) for k in (
        "per_device_train_batch_size", "gradient_accumulation_steps", "num_generations",
        "steps_per_generation", "num_iterations", "max_completion_length", "loss_type",
        "beta", "epsilon", "epsilon_high", "scale_rewards", "learning_rate", "max_grad_norm")}
    expected = [ids for ids in setup["prompt_ids"] for _ in range(cfg["group"])]
    if seen != expected:
        raise SystemExit(f"TRL side: generate got other prompts than the shared ones: {seen[:2]}")
    if len(phases) != cfg["reps"] + 1 or any(p["generate_s"] <= 0 for p in phases):
        raise SystemExit(f"TRL side: {len(phases)} timed steps, generate timed {phases}")
    return {"step_s": times[1:], "phases": phases[1:], "trl": trl.__version__,
            "transformers": transformers.__version__, "settings": settings,
            "prompt0_logprobs": check_lp.tolist(), "threads": torch.get_num_threads(),
            "checked": "generate's prompts are the shared ids (G times each, in order); every "
                       "completion is new_tokens long"}


# ----------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer prompts and tokens")
    ap.add_argument("--side", choices=("both", "trl"), default="both")
    ap.add_argument("--workdir", help="the shared setup (--side trl)")
    ap.add_argument("--rounds", type=int, default=2,
                    help="rounds of (TRL's reps steps, then ours); the steps are pooled")
    ap.add_argument("--engine", choices=("continuous", "static"), default="continuous",
                    help="our rollout engine (rollout.engine; default: the product's default)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = {**sizes(args.quick), "engine": args.engine}
    if args.side == "trl":
        print(json.dumps(run_trl(Path(args.workdir), cfg)))
        return
    if not TRL_PYTHON.exists():
        sys.exit(f"bench.vs_trl: {TRL_PYTHON} is missing; create it with tools/trl_env.sh")
    began, load_at_start = time.perf_counter(), os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="rlad_vs_trl_") as tmp:
        folder = Path(tmp)
        write_setup(folder, cfg)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO),
               "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}
        step, ours = build_ours(folder, cfg)
        ours.update(step_s=[], phases=[])
        step(0)  # warm-up
        theirs: dict = {}
        for r in range(args.rounds):  # alternate the sides, so that load drift hits both
            proc = subprocess.run([str(TRL_PYTHON), "-m", "bench.vs_trl", "--side", "trl",
                                   "--workdir", tmp] + (["--quick"] if args.quick else []),
                                  cwd=REPO, env=env, capture_output=True, text=True)
            if proc.returncode:
                sys.exit(f"bench.vs_trl: the TRL side failed:\n{proc.stderr[-4000:]}")
            one = json.loads(proc.stdout.strip().splitlines()[-1])
            for key in ("step_s", "phases"):
                one[key] = theirs.get(key, []) + one[key]
            theirs = one
            for k in range(cfg["reps"]):
                seconds, phases = step(1 + r * cfg["reps"] + k)
                ours["step_s"].append(seconds)
                ours["phases"].append(phases)
    tokens = cfg["prompts"] * cfg["group"] * cfg["new_tokens"]
    rows = {}
    for name, side in (("ours", ours), ("trl", theirs)):
        med = statistics.median(side["step_s"])
        rows[name] = {"step_s": side["step_s"], "median_s": med, "min_s": min(side["step_s"]),
                      "tok_s": tokens / med, "tok_s_best": tokens / min(side["step_s"]),
                      "phases_median": {k: statistics.median(p[k] for p in side["phases"])
                                        for k in side["phases"][0]},
                      "phases": side["phases"]}
    # informational: our step without the old log-prob pass TRL skips at num_iterations 1
    no_old = statistics.median(s - p["old_logprobs_s"]
                               for s, p in zip(ours["step_s"], ours["phases"]))
    rows["ours"]["tok_s_without_old_logprobs"] = tokens / no_old
    weights_diff = max(abs(a - b) for a, b in zip(ours["prompt0_logprobs"],
                                                  theirs["prompt0_logprobs"]))
    if weights_diff > 1e-3:
        sys.exit(f"bench.vs_trl: the two sides' models disagree (log-prob diff {weights_diff})")
    speedup = rows["ours"]["tok_s"] / rows["trl"]["tok_s"]
    result = {"mode": "quick" if args.quick else "full", "config": cfg, "rounds": args.rounds,
              "model": MODEL,
              "vocab": VOCAB, "tokens_per_step": tokens,
              "tok_s_definition": "prompts x G x new_tokens generated tokens / step seconds "
                                  "(median of the steps after one warm-up)",
              "same_weights_check": {"prompt0_logprob_max_abs_diff": weights_diff},
              "ours": rows["ours"],
              "trl": {**rows["trl"], "version": theirs["trl"],
                      "transformers": theirs["transformers"], "settings": theirs["settings"],
                      "checked": theirs["checked"]},
              "speedup": speedup, "speedup_best": rows["ours"]["tok_s_best"] /
              rows["trl"]["tok_s_best"],
              "speedup_without_old_logprobs": rows["ours"]["tok_s_without_old_logprobs"] /
              rows["trl"]["tok_s"],
              "target": ">= 2", "target_met": speedup >= 2.0,
              "env": {"torch": torch.__version__, "cpus": os.cpu_count(),
                      "threads": {"ours": ours["threads"], "trl": theirs["threads"]},
                      "machine": platform.machine(), "loadavg_at_start": load_at_start,
                      "loadavg_at_end": os.getloadavg()},
              "wall_s": time.perf_counter() - began}
    from bench.report import write_result

    write_result("vs_trl", result["mode"], result)
    for name in ("ours", "trl"):
        r = rows[name]
        print(f"{name}: median step {r['median_s']:.2f} s (min {r['min_s']:.2f}), "
              f"{r['tok_s']:.0f} generated tok/s; median phases: "
              + ", ".join(f"{k} {v:.2f}" for k, v in r["phases_median"].items()))
    print(f"same weights: prompt-0 log-probs agree to {weights_diff:.1e}; ours without the old "
          f"log-prob pass: {rows['ours']['tok_s_without_old_logprobs']:.0f} tok/s "
          f"(x{result['speedup_without_old_logprobs']:.2f})")
    print(f"RESULT vs_trl speedup={speedup:.2f} ours_tok_s={rows['ours']['tok_s']:.0f} "
          f"trl_tok_s={rows['trl']['tok_s']:.0f} target_met={result['target_met']}")

if __name__ == "__main__":
    main()
