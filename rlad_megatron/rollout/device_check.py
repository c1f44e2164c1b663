"""The decode loop on a fake CUDA device (runtime/fake_cuda.py), with a tiny stand-in model: the
host transfers of each decode step, for tests/unit/rollout/test_fake_device.py and bench/rollout
(`d2h_per_decode_step`).

Everything but the model is the rollout's own code: generate.py's `_decode` (prefill, decode
steps, stop flags), pipeline.py's StageRunner (forward, KV-cache offsets; `_chunk_forward`, the
call into megatron's GPTModel, is the one method replaced), the sampler (ops/sampling.py) and the
layouts. Megatron's model is not run on the fake device: it builds and owns its parameters. The
loop runs under no_grad instead of inference_mode (wrapper tensors cannot be inference tensors).
"""

from __future__ import annotations

import contextlib
import types

import torch

from rlad_megatron.rollout.generate import GenerationConfig, _assemble, _decode
from rlad_megatron.rollout.layout import LeftPadded, left_padded
from rlad_megatron.rollout.pipeline import StageRunner
from rlad_megatron.runtime.devices import compute_device
from rlad_megatron.runtime.fake_cuda import FakeCuda, on_fake_cuda

VOCAB, HIDDEN = 50, 16
PROMPTS = [[1, 2, 3], [4, 5], [6], [7, 8, 9, 10]]


class TinyStage(torch.nn.Module):
    """A last pipeline stage: logits [b, s, V] = tanh(cumsum_t emb[tokens]) @ out."""

    post_process = True

    def __init__(self, fake: bool, requires_grad: bool = False, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        emb, out = torch.randn(VOCAB, HIDDEN, generator=g), torch.randn(HIDDEN, VOCAB,
                                                                       generator=g) / 4
        place = ((lambda t: on_fake_cuda(t, requires_grad)) if fake else
                 (lambda t: t.clone().requires_grad_(requires_grad)))
        self.emb, self.out = place(emb), place(out)

    def all_logits(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.emb[tokens].cumsum(1).tanh() @ self.out


class _Runner(StageRunner):
    def _chunk_forward(self, chunk, ctx, tokens, pos, mask):
        return chunk.all_logits(tokens)[:, -1]


def tiny_runner(stage: TinyStage):
    """(StageRunner, model record) of one stage at TP = PP = 1."""
    par = types.SimpleNamespace(sequence_parallel=False, pp=1, pp_rank=0, pp_group=None,
                                tp_group=None, last_stage_global_rank=0)
    model = types.SimpleNamespace(
        par=par, modules=[stage], spec=types.SimpleNamespace(vocab_size=VOCAB),
        config=types.SimpleNamespace(hidden_size=HIDDEN, pipeline_dtype=None,
                                     params_dtype=torch.float32))
    return _Runner(model), model


@contextlib.contextmanager
def no_grad_for_inference_mode():
    saved = torch.inference_mode
    torch.inference_mode = torch.no_grad
    try:
        yield
    finally:
        torch.inference_mode = saved


def tiny_rollout(stage: TinyStage, prompts: list[list[int]], cfg: GenerationConfig, *,
                 seed: int, row_offset: int = 100):
    """generate()'s decode loop and layout with `stage` as the model, on compute_device() (the
    fake device inside FakeCuda): (RolloutBatch of len(prompts) x cfg.samples_per_prompt rows,
    consecutive groups; steps run; the host transfers the decode loop made, when FakeCuda is on).
    Call it under no_grad (see the module docstring). The static engine's loop only
    (cfg.engine=static): the continuous engine runs on megatron's dynamic context, which
    TinyStage is not."""
    if cfg.engine != "static":
        raise ValueError(f"tiny_rollout runs the static decode loop; got engine={cfg.engine!r}")
    runner, model = tiny_runner(stage)
    device = compute_device()
    padded = left_padded(prompts, pad_id=0).repeat(cfg.samples_per_prompt)
    inputs = LeftPadded(padded.tokens.to(device), padded.lengths.to(device))
    b = inputs.tokens.shape[0]
    row_ids = torch.arange(b, device=device) + row_offset
    mode = FakeCuda.active()
    before = len(mode.d2h) if mode else 0
    seq, lp, flp, resp, steps = _decode(runner, model, inputs, cfg, seed=seed, row_ids=row_ids)
    transfers = mode.d2h[before:] if mode else []
    group_ids = torch.arange(b, device=device) // cfg.samples_per_prompt
    batch = _assemble(inputs, seq, lp, flp, resp, steps, cfg, group_ids=group_ids).batch
    return batch, steps, transfers


def decode_transfers(cfg: GenerationConfig, *, fake: bool = True, seed: int = 3):
    """Run the decode loop over PROMPTS; returns (transfers: the kinds of the device-to-host
    transfers the loop made, in order (empty when fake is False), steps run, {tokens,
    sampler_logprobs, loss_mask} of the result on the host)."""
    mode = FakeCuda() if fake else contextlib.nullcontext()
    with no_grad_for_inference_mode(), mode:
        batch, steps, transfers = tiny_rollout(TinyStage(fake), PROMPTS, cfg, seed=seed)
        host = {k: getattr(batch, k).cpu() for k in ("tokens", "sampler_logprobs", "loss_mask")}
    return transfers, steps, host
