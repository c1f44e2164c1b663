"""One RLAD step's device work on a fake CUDA device (runtime/fake_cuda.py), through the train
loop's own phases: no host/device mixing, and no [b, s] tensor crosses to the host but the token
ids the reward decodes.

What runs, with real values, in the order of train/loop.py rl_step (teacher trajectories on, so
the gates run too): the student's and the teacher's rollouts (rollout/generate.py's decode loop
and layout, rollout/device_check.py), interleave_groups, phases.score (the real tokenizer decodes
the rows), phases.advantages, the log-prob passes through models/forward.py's
planned_micro_batches and scatter_rows, phases.select (selection and the three gates),
RunConfig.loss_for and the joint RLAD loss over the plan's micro-batches (TrainBatch.select_rows /
with_width, LossInputs, train/step.py's normaliser counts), the backward and an optimizer step.
The model is rollout/device_check.py's tiny stand-in for megatron's GPTModel (megatron builds and
owns its parameters, so its schedule and optimizer run in tests/dist and tools/gpu_check.sh).
The reward function is the test's own (a rule on the decoded text), so that rewards vary.

On the code before the step was made device-resident this test failed: phases.score made the
rewards on the host, and phases.advantages met them with the device's group ids
(FakeDeviceMismatch); the log-prob passes copied their [b, s] results to the host.
"""

import contextlib
import dataclasses
import importlib.metadata
import types

import torch

from rlad_megatron.data.batch import TrainBatch, interleave_groups
from rlad_megatron.data.formats import get_format
from rlad_megatron.data.micro_batches import row_lengths, token_budget_plan
from rlad_megatron.data.tasks import PromptItem
from rlad_megatron.data.tokenizer import load_tokenizer
from rlad_megatron.losses import LossInputs, Normalisers
from rlad_megatron.models.forward import (align_to_tokens, next_token_labels,
                                          planned_micro_batches, scatter_rows)
from rlad_megatron.ops import token_logprobs
from rlad_megatron.rollout.device_check import (PROMPTS, VOCAB, TinyStage,
                                                no_grad_for_inference_mode, tiny_rollout)
from rlad_megatron.rollout.generate import GenerationConfig
from rlad_megatron.runtime.fake_cuda import FakeCuda, FakeCudaTensor
from rlad_megatron.train import phases
from rlad_megatron.config.run import load_config
from rlad_megatron.train.step import _local_counts

G, K = 3, 1  # student samples and teacher trajectories per prompt


def _run():
    cfg = load_config(None, ["student.preset=tiny-llama", "student.random_init=true",
                             "teacher.preset=tiny-llama", "teacher.random_init=true",
                             "algorithm=rlad", f"rollout.group_size={G}",
                             f"rollout.teacher_samples={K}", "imitation.gate_explore=false",
                             "imitation.tau_align=2.0", "advantage.drop_zero_variance=true"])
    path = importlib.metadata.distribution("mistral-common").locate_file(
        "mistral_common/data/tokenizer.model.v1")
    # the completion itself goes to the reward: a rule on its first character (a tiny random
    # model writes no answer tags)
    fmt = dataclasses.replace(get_format("chat"), to_reward_text=lambda text, item: text)
    return types.SimpleNamespace(cfg=cfg, tokenizer=load_tokenizer(str(path)), fmt=fmt,
                                 reward_fn=lambda text, item: float(ord(text[:1] or "a") % 2))


def _logprobs(stage: TinyStage, tokens: torch.Tensor, plan) -> torch.Tensor:
    """A log-prob pass as models/forward.py forward_logprobs cuts and reassembles it."""
    parts = [align_to_tokens(token_logprobs(stage.all_logits(m.tokens), m.labels, None,
                                            temperature=1.0, vocab_size=VOCAB))
             for m in planned_micro_batches(tokens, plan)]
    return scatter_rows(parts, plan, tuple(tokens.shape))


def rl_step_device_work(fake: bool) -> tuple[dict, FakeCuda | None, int]:
    """The step (module docstring) on the fake device or the CPU: (its results on the host, the
    mode with its transfer records, the index of the first transfer after the rollouts)."""
    run = _run()
    items = [PromptItem(id=str(i), question="q", answer="1", task="chain_sum")
             for i in range(len(PROMPTS))]
    # extra ids end rows too, so that response lengths (and micro-batch widths) vary
    gen = GenerationConfig(engine="static", max_new_tokens=8,
                           eos_token_id=[run.tokenizer.eos_id, 5, 9, 13], samples_per_prompt=G,
                           progress=False)
    mode = FakeCuda() if fake else contextlib.nullcontext()
    with no_grad_for_inference_mode(), mode:
        student = TinyStage(fake, requires_grad=True, seed=0)
        teacher = TinyStage(fake, seed=1)
        with torch.no_grad():
            own, _, _ = tiny_rollout(student, PROMPTS, gen, seed=3)
            theirs, _, _ = tiny_rollout(teacher, PROMPTS,
                                        dataclasses.replace(gen, samples_per_prompt=K), seed=4)
            rollout, teacher_rows = interleave_groups(own, theirs, group_size=G,
                                                      teacher_samples=K)
            first = len(mode.d2h) if fake else 0
            rewards, _ = phases.score(run, rollout, items)
            advantages, loss_mask = phases.advantages(run, rewards, rollout, teacher_rows)
            plan = token_budget_plan(row_lengths(rollout.prompt_lengths,
                                                 rollout.response_lengths), 24)
            old = _logprobs(student, rollout.tokens, plan)
            teacher_lp = _logprobs(teacher, rollout.tokens, plan)
            batch = phases.select(run, TrainBatch.from_rollout(
                dataclasses.replace(rollout, loss_mask=loss_mask), rewards=rewards,
                advantages=advantages, old_logprobs=old, teacher_logprobs=teacher_lp,
                teacher_rows=teacher_rows), rollout.loss_mask)
        loss = run.cfg.loss_for(step=1)
        counts = _local_counts(loss, batch)
        counts.pop("rows")
        norms = Normalisers(**counts)
        total = 0.0
        for rows, width in zip(plan.rows, plan.widths):
            part = batch.select_rows(rows).with_width(width)
            tokens = part.tokens
            lp = align_to_tokens(token_logprobs(student.all_logits(tokens),
                                                next_token_labels(tokens), None,
                                                temperature=1.0, vocab_size=VOCAB))
            value, _ = loss(lp, LossInputs.from_record(part), norms)
            value.backward()
            total = total + value.detach()
        grads = [student.emb.grad.clone(), student.out.grad.clone()]
        torch.optim.AdamW([student.emb, student.out], lr=1e-2, foreach=False).step()
        device_values = {"rewards": rewards, "advantages": advantages, "old": old,
                         "teacher": teacher_lp, "teacher_mask": batch.teacher_mask,
                         "distill_mask": batch.distill_mask, "loss": total,
                         "grad_emb": grads[0], "grad_out": grads[1],
                         "emb": student.emb.detach(), "out": student.out.detach()}
        on_device = all(isinstance(v, FakeCudaTensor) for v in device_values.values())
        host = {k: (v.inner if isinstance(v, FakeCudaTensor) else v).clone()
                for k, v in device_values.items()}
    assert on_device or not fake, {k: type(v) for k, v in device_values.items()}
    return host, (mode if fake else None), first


def test_an_rlad_step_runs_on_the_fake_device_and_reads_no_per_token_tensor_but_the_text():
    """No op mixes host and device tensors; after the rollouts, every host read is a scalar or
    a [b] row vector (lengths for the micro-batch plan and the text, selection statistics) but
    one: the [b, s] token ids phases.score decodes; every value equals the same step on the
    CPU, bit for bit."""
    got, mode, first = rl_step_device_work(fake=True)
    want, _, _ = rl_step_device_work(fake=False)
    rows = len(PROMPTS) * (G + K)
    reads = list(zip(mode.d2h, mode.d2h_numel))[first:]
    large = [r for r in reads if r[1] > rows]
    assert len(large) == 1 and large[0][0] == "tolist", reads
    # measured: the token ids and the [b] lengths for the text, a group count (advantages), the
    # [b] lengths for the plan, the selection's and the gates' token counts: 8 in all
    assert len(reads) <= 10, reads
    assert large[0][1] % rows == 0  # the token ids: [b, s]
    assert 0 < float(want["rewards"].mean()) < 1  # rewards vary, so advantages do
    assert want["distill_mask"].any() and want["teacher_mask"].any()
    assert float(want["grad_out"].abs().sum()) > 0
    for key, value in want.items():
        assert torch.equal(got[key], value), key
