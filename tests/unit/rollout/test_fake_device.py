"""The RL step's device work on a fake CUDA device (runtime/fake_cuda.py): no host/device mixing,
and the host transfers of one decode step counted and bounded.

What runs on the fake device, with real values: the rollout's own decode loop
(rollout/generate.py `_decode`: prefill and decode steps, stop flags, tokens, masks, positions),
its pipeline stage (rollout/pipeline.py StageRunner: forward, KV-cache bookkeeping, the last
stage's logits), the sampler (ops/sampling.py: noise, Gumbel-max, top-k, top-p, log-probs), the
output layout (rollout/layout.py), a log-prob pass's kernel (ops.token_logprobs, its TP=1 path),
the TRRD loss with its statistics, and the backward into the weights. A host tensor meeting a
device tensor raises FakeDeviceMismatch, as CUDA would; device-to-host transfers are recorded.

The boundary (rollout/device_check.py): the model is a tiny embedding + output projection
standing in for megatron's GPTModel (StageRunner._chunk_forward is the one method replaced),
because megatron builds and owns its parameters (its schedule, forward_logprobs' path and the
optimizer step are not run here); the GPU check (tools/gpu_check.sh) runs megatron's model on a
real device. The decode loop runs under no_grad instead of inference_mode (wrapper tensors
cannot be inference tensors). Collectives are not exercised (one process; TP/PP runs are
tests/dist).

Before the decode loop was made device-resident this test failed: StageRunner.forward returned
`out.cpu()`, so every step copied the [b, V] logits to the host ("to_cpu") before the sampler
ran there.
"""

import pytest
import torch

from rlad_megatron.ops import token_logprobs
from rlad_megatron.rollout.device_check import VOCAB, TinyStage, decode_transfers
from rlad_megatron.rollout.generate import GenerationConfig

from rlad_megatron.runtime.devices import compute_device
from rlad_megatron.runtime.fake_cuda import FakeCuda, FakeCudaTensor, FakeDeviceMismatch


def Static(**kw) -> GenerationConfig:  # noqa: N802 (reads as the config it makes)
    """The static engine's config: tiny_rollout runs its decode loop."""
    return GenerationConfig(engine="static", **kw)


@pytest.mark.parametrize("filters", [{}, {"top_k": 5}, {"top_p": 0.5, "top_p_candidates": 40},
                                     {"top_k": 5, "top_p": 0.9}, {"temperature": 0.0}],
                         ids=["plain", "top-k", "top-p", "top-k-top-p", "greedy"])
def test_a_decode_step_on_a_fake_cuda_device_moves_only_the_stop_flag_to_the_host(filters):
    """Ten decode steps (no EOS) on cuda:0: no op mixes devices, and the host reads are the stop
    check, one [1] bool per step (top-p without top-k: read with its candidate check, one [2]);
    the tokens and log-probs are those of the same loop on the CPU, bit for bit."""
    cfg = Static(max_new_tokens=10, eos_token_id=None, progress=False,
                           **{"temperature": 1.0, **filters})
    transfers, steps, fake = decode_transfers(cfg)
    _, _, cpu = decode_transfers(cfg, fake=False)
    assert steps == 10
    # top-p alone reads its candidate check with the stop flag: one [2] tolist
    kind = "tolist" if filters.get("top_p", 1.0) < 1.0 and not filters.get("top_k") else "item"
    assert transfers == [kind] * steps, transfers[:6]
    for key in fake:
        assert torch.equal(fake[key], cpu[key]), key


def test_the_stop_flag_read_every_k_steps_is_one_host_read_per_k_steps():
    """GenerationConfig.stop_check_every = 4: 12 decode steps read the host 3 times, and sample
    what reading every step samples."""
    cfg = Static(max_new_tokens=12, progress=False, stop_check_every=4)
    transfers, steps, got = decode_transfers(cfg)
    assert steps == 12 and transfers == ["item"] * 3, transfers
    _, _, want = decode_transfers(Static(max_new_tokens=12, progress=False),
                                  fake=False)
    for key in want:
        assert torch.equal(got[key], want[key]), key


def test_top_p_reading_its_candidate_check_with_the_stop_flag_samples_the_exact_nucleus():
    """Top-p alone with too few candidates (the deferred check fails at every step here, so each
    step samples again over all ids, one more host read) gives the tokens and log-probs of the
    sampler that gathers every id from the start."""
    few, every = ({"top_p": 0.5, "top_p_candidates": c} for c in (4, VOCAB))
    transfers, steps, got = decode_transfers(Static(max_new_tokens=10, progress=False,
                                                              **few))
    assert transfers.count("tolist") == steps and transfers.count("item") > 0
    _, _, want = decode_transfers(Static(max_new_tokens=10, progress=False, **every),
                                  fake=False)
    for key in want:
        assert torch.equal(got[key], want[key]), key


def test_host_device_mixing_and_bulk_copies_are_caught():
    """The check itself: a host tensor in a device op raises; .cpu(), .tolist() and .item() of a
    device tensor are recorded."""
    with FakeCuda() as mode:
        x = torch.zeros(3, 4, device=compute_device())
        with pytest.raises(FakeDeviceMismatch):
            x + torch.ones(4)
        x + torch.tensor(1.0)  # a 0-dim host tensor is a scalar, as on CUDA
        x.cpu()
        x.tolist()
        float(x.sum())
    assert mode.d2h == ["to_cpu", "tolist", "item"]


def test_log_prob_pass_trrd_loss_and_backward_on_the_fake_device_without_host_transfers():
    """A log-prob pass (ops.token_logprobs over [b, s, V] logits), the TRRD loss with its
    statistics and the backward into the model's weights run on the fake device without a host
    transfer, and give the values and gradients of the same step on the CPU."""
    from loss_options import trrd_opts
    from rlad_megatron.losses import trrd_loss

    b, s = 3, 7
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, VOCAB, (b, s), generator=g)
    mask = torch.rand(b, s, generator=g) > 0.3
    adv, noise = torch.randn(b, generator=g), torch.randn(b, s, generator=g) * 0.1

    def step(chunk, place):
        tok = place(tokens)
        lp = token_logprobs(chunk.all_logits(tok[:, :-1]), tok[:, 1:], None, temperature=1.0,
                           vocab_size=VOCAB)
        lp = torch.cat([torch.zeros_like(lp[:, :1]), lp], 1)
        value, stats = trrd_loss(lp, lp.detach() + place(noise), lp.detach() - 0.5, place(adv),
                                 place(mask), **trrd_opts(), num_seqs=b,
                                 num_tokens=int(mask.sum()))
        value.backward()
        return value, stats, chunk

    with FakeCuda() as mode:
        value, stats, fake = step(TinyStage(True, requires_grad=True),
                                  lambda t: t.to(compute_device()))
        on_device = [value, *stats.values(), fake.emb.grad, fake.out.grad]
        assert all(isinstance(t, FakeCudaTensor) for t in on_device)
    assert mode.d2h == [], mode.d2h
    ref_value, ref_stats, ref = step(TinyStage(False, requires_grad=True), lambda t: t)
    assert torch.equal(value.inner, ref_value.detach())
    assert all(torch.equal(stats[k].inner, ref_stats[k]) for k in ref_stats)
    assert torch.equal(fake.out.grad.inner, ref.out.grad)
    assert torch.equal(fake.emb.grad.inner, ref.emb.grad)
