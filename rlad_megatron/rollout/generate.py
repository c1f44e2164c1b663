"""Batched, KV-cached sampling from a megatron GPTModel (student or frozen teacher) under TP/PP.

    batch = generate(model, prompts, GenerationConfig(max_new_tokens=256, temperature=1.0,
                                                      eos_token_id=eos, samples_per_prompt=8))

A thin loop over GPTModel.forward with megatron's StaticInferenceContext as the KV cache: one
prefill over the left-padded prompts, then one forward of [b, 1] per new token (pipeline.py);
the next token is drawn from the vocab-parallel logits (ops/sampling.py); generation stops per row
at EOS and for the batch when every row has stopped or max_new_tokens is reached.

Why not megatron's inference engines (megatron-core 0.16.1, docs/megatron_inference_cpu.md): the
dynamic engine's controller samples with torch.multinomial on gathered logits and its context needs
flash-attn kernels (rollout.engine=continuous, rollout/continuous.py, uses that context with this
project's sampler and, on CPU, a torch attention); the legacy static engine
(StaticInferenceEngine(legacy=True) + TextGenerationController) needs extra CPU shims
(torch.cuda.Event, communication_utils._is_cuda, a scoped cuda_to_cpu around generate), gathers the
full-vocabulary logits on every TP rank (broadcasting them over PP each step), samples with
torch.multinomial (not TP-invariant) and prefills only up to the SHORTEST prompt, feeding longer
prompts one token per step. This loop needs only the shims init_parallel applies (current_device,
the CPU RNG tracker).

Contract:
  * Every rank of a model-parallel group (TP x PP) calls generate with the same prompts and
    config; each DP rank generates its own prompts. Results are identical on every rank of the
    group, and do not depend on the TP/PP layout for a given seed (ops/sampling.py).
  * Row r of the batch (after repeating each prompt G = samples_per_prompt times) draws its
    noise as row id row_offset + r; row_offset defaults to dp_rank * b, the global row index
    when every DP rank has b rows. Vary `seed` between calls (e.g. base seed + iteration):
    the same (seed, row id) draws the same noise.
  * Output (data.batch.RolloutBatch): row i is prompt_i, response_i, then pad_token_id, from
    column 0; s = max_i (prompt_len_i + response_len_i). loss_mask is True on the response
    tokens, the EOS token included; sampler_logprobs[:, t] is the log-prob of tokens[:, t] under
    softmax(logits / T) (T = 1 when greedy, temperature 0), 0 off the mask. The log-prob under the
    top-k/top-p-filtered distribution is in Generation.filtered_logprobs (generate_detailed).
  * The model is put in eval mode for the call and restored afterwards; DDP-wrapped chunks are
    run through their inner module (no grad sync, no hooks), under torch.no_grad.
  * Device: every tensor of the decode loop (tokens, masks, positions, the KV cache, the logits,
    the sampler's noise and filters, log-probs, stop flags) lives on the compute device
    (runtime/devices.py); the one host synchronisation per decode step is the stop check (a [1]
    bool: has every row ended; with top-p alone read together with the sampler's candidate check,
    ops/sampling.py defer_retry, as one [2] read, and a second only when the check fails). The
    returned RolloutBatch stays on the compute device too, for the log-prob passes and the
    update; whoever needs its text (the reward) copies the token ids to the host once
    (train/generation.py completions). tests/unit/rollout/test_fake_device.py runs a decode step
    on a fake CUDA device and counts its host transfers (tests/unit/train/test_fake_device_step.py:
    a whole step). Verified on CPU with megatron's local layer spec; the transformer-engine spec
    treats explicit padding masks differently
    (docs/megatron_inference_cpu.md, section 6).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Sequence, Union

import torch
import torch.distributed as dist
from torch import Tensor
from tqdm import tqdm

from rlad_megatron.data.batch import RolloutBatch
from rlad_megatron.models.build import BuiltModel
from rlad_megatron.rollout.layout import (LeftPadded, PromptsIn, decode_mask, left_padded,
                                          positions, prefill_mask, right_padded,
                                          working_buffers)
from rlad_megatron.rollout.pipeline import StageRunner
from rlad_megatron.runtime import mcore_compat
from rlad_megatron.runtime.devices import compute_device
from rlad_megatron.ops.sampling import TOP_P_CANDIDATES, sample_next


ENGINES = ("static", "continuous")


@dataclass
class GenerationConfig:
    """How to sample; one per rollout (student) or trace generation (teacher)."""

    max_new_tokens: int
    """New tokens per row at most (EOS included)."""
    temperature: float = 1.0
    """Softmax temperature; 0 means greedy (argmax, filters ignored)."""
    top_k: int = 0
    """Keep the k most likely tokens; 0 is off."""
    top_p: float = 1.0
    """Nucleus: keep the smallest most-likely set with mass >= top_p (after top_k); 1 is off."""
    eos_token_id: Union[int, Sequence[int], None] = None
    """Token id(s) that end a row; None generates max_new_tokens for every row."""
    pad_token_id: int = 0
    """Fills the prompts' padding and the rows after their EOS."""
    samples_per_prompt: int = 1
    """G: each prompt is repeated G times in a row (its rows share a group id)."""
    seed: int = 0
    """Base of the sampling noise (ops/sampling.py); generate(seed=...) overrides it per call."""
    use_cache: bool = True
    """False recomputes the whole prefix every step (reference and benchmark baseline)."""
    progress: bool = True
    """tqdm bar over the decode steps, on global rank 0 only."""
    top_p_candidates: int = TOP_P_CANDIDATES
    """Ids per TP rank gathered for top-p before falling back to all (speed only)."""
    micro_batch_size: int = 0
    """Rows generated together (their KV cache and logits); 0 = all rows at once. The noise is
    keyed by row id (ops/sampling.py), so the samples do not depend on it."""
    stop_check_every: int = 1
    """engine=static: decode steps between two reads of the stop flag (has every row ended?),
    the loop's one host synchronisation (the continuous engine reads which rows stopped every
    step: it admits waiting rows into their slots): k > 1 lets a GPU run k steps ahead of the
    host, at the cost of up to k - 1 forwards after the last row ended. The samples do not depend
    on it (ended rows get padding). Top-p alone reads its candidate check every step, with the
    stop flag."""
    engine: str = "continuous"
    """"continuous" (the default): at most max_live_rows rows in flight, a stopped row's slot
    taken by the next waiting row (rollout/continuous.py, megatron's DynamicInferenceContext);
    "static": generation micro-batches, each run until its longest row ends. The same tokens;
    log-probs within fp32 round-off (another attention kernel)."""
    max_live_rows: int = 0
    """continuous: rows in flight at most; 0 = micro_batch_size, or every row."""
    kv_block_size: int = 256
    """continuous: tokens per KV-cache block (flash-attn 2's paged kernel needs a multiple of
    256)."""

    def validate(self, prefix: str = "rollout", keys: Optional[Mapping[str, str]] = None) -> None:
        """A ValueError naming the first bad setting as `prefix.field`, or as `keys[field]` where
        the setting has another name (a run config's rollout.group_size for samples_per_prompt;
        config/generation.py). The run config's sampling checks are these (config/validate.py
        validates the run's generations through them)."""
        def key(name: str) -> str:
            return (keys or {}).get(name, f"{prefix}.{name}")

        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"{key('max_new_tokens')} must be a positive integer, got "
                             f"{self.max_new_tokens!r}")
        if not self.temperature >= 0:
            raise ValueError(f"{key('temperature')} must be >= 0, got {self.temperature!r}")
        if self.top_k < 0:
            raise ValueError(f"{key('top_k')} must be >= 0 (0 is off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"{key('top_p')} must be in (0, 1] (1 is off), got {self.top_p}")
        if self.samples_per_prompt < 1:
            raise ValueError(f"{key('samples_per_prompt')} must be >= 1, got "
                             f"{self.samples_per_prompt}")
        if self.micro_batch_size < 0:
            raise ValueError(f"{key('micro_batch_size')} must be >= 0 (0: all rows at once), "
                             f"got {self.micro_batch_size}")
        if self.stop_check_every < 1:
            raise ValueError(f"{key('stop_check_every')} must be >= 1, got "
                             f"{self.stop_check_every}")
        if self.engine not in ENGINES:
            raise ValueError(f"{key('engine')} must be one of {', '.join(ENGINES)}, got "
                             f"{self.engine!r}")
        if self.max_live_rows < 0:
            raise ValueError(f"{key('max_live_rows')} must be >= 0 (0: micro_batch_size, or "
                             f"every row), got {self.max_live_rows}")
        if self.kv_block_size < 1:
            raise ValueError(f"{key('kv_block_size')} must be >= 1, got {self.kv_block_size}")
        if self.engine == "continuous" and not self.use_cache:
            raise ValueError(f"{key('engine')}=continuous keeps a KV cache: use_cache must be on")
        if self.engine == "continuous" and self.stop_check_every != 1:
            raise ValueError(f"{key('stop_check_every')}={self.stop_check_every} applies to "
                             f"{key('engine')}=static (the continuous engine reads which rows "
                             f"stopped every step, to admit waiting rows)")
        if self.top_p_candidates < 1:
            raise ValueError(f"{key('top_p_candidates')} must be >= 1, got "
                             f"{self.top_p_candidates}")

    def eos_ids(self) -> Tensor:
        ids = self.eos_token_id
        ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
        return torch.tensor(ids, dtype=torch.long)


@dataclass(frozen=True)
class Generation:
    """generate_detailed's result: the RolloutBatch and what it has no field for."""

    batch: RolloutBatch
    filtered_logprobs: Tensor  # [b, s] fp32: under the top-k/top-p distribution, 0 off the mask
    steps: int  # forwards run (<= max_new_tokens; fewer when every row hit EOS)
    kv_cache_bytes: int = 0  # the largest KV cache held at once (one generation micro-batch's)


OnMicroBatch = Callable[[slice, RolloutBatch], None]
"""on_micro_batch(rows, part): called once a generation micro-batch is complete, with the rows
it holds in the final batch and those rows as a RolloutBatch of their own width (tokens equal to
the final batch's tokens[rows, :part.seq_len]). The train loop scores them with the teacher
while the next micro-batch is generated (train/teacher_scoring.py DuringRollout)."""


def generate(model: BuiltModel, prompts: PromptsIn, cfg: GenerationConfig, *,
             prompt_lengths: Optional[Tensor] = None, padding_side: str = "right",
             seed: Optional[int] = None, row_offset: Optional[int] = None,
             on_micro_batch: Optional[OnMicroBatch] = None) -> RolloutBatch:
    """Sample responses to `prompts`; see the module docstring for the contract.

    prompts: list of token-id lists, or a padded [n, P] int64 tensor with prompt_lengths [n]
        and padding_side ("right": real tokens first; "left": real tokens last).
    Returns a RolloutBatch of b = n * samples_per_prompt rows, identical on the model-parallel
    group's ranks."""
    return generate_detailed(model, prompts, cfg, prompt_lengths=prompt_lengths,
                             padding_side=padding_side, seed=seed, row_offset=row_offset,
                             on_micro_batch=on_micro_batch).batch


@torch.no_grad()
def generate_detailed(model: BuiltModel, prompts: PromptsIn, cfg: GenerationConfig, *,
                      prompt_lengths: Optional[Tensor] = None, padding_side: str = "right",
                      seed: Optional[int] = None, row_offset: Optional[int] = None,
                      on_micro_batch: Optional[OnMicroBatch] = None) -> Generation:
    """generate(), also returning the filtered log-probs and the number of steps run."""
    cfg.validate()
    inputs = left_padded(prompts, prompt_lengths=prompt_lengths, padding_side=padding_side,
                         pad_id=cfg.pad_token_id).repeat(cfg.samples_per_prompt)
    b, p = inputs.tokens.shape
    max_len = p + cfg.max_new_tokens
    limit = model.spec.max_position_embeddings
    if max_len > limit:
        raise ValueError(f"rollout: longest prompt {p} + max_new_tokens {cfg.max_new_tokens} = "
                         f"{max_len} exceeds {model.spec.name or 'model'}.max_position_embeddings "
                         f"{limit}")
    offset = model.par.dp_rank * b if row_offset is None else row_offset
    device = compute_device()
    inputs = inputs.to(device)
    group_ids = (torch.arange(b, device=device) + offset) // cfg.samples_per_prompt
    if cfg.engine == "continuous":
        return _generate_continuous(model, inputs, cfg, seed=cfg.seed if seed is None else seed,
                                    row_ids=torch.arange(b, device=device) + offset,
                                    group_ids=group_ids, on_micro_batch=on_micro_batch)
    runner = StageRunner(model)
    modes = [chunk.training for chunk in runner.chunks]
    try:
        for chunk in runner.chunks:
            chunk.eval()
        # generation micro-batches: the KV cache and logits hold micro_batch_size rows at most
        size = cfg.micro_batch_size or b
        parts, kv_bytes = [], 0
        for lo in range(0, b, size):
            rows = slice(lo, min(lo + size, b))
            part_inputs = LeftPadded(inputs.tokens[rows], inputs.lengths[rows])
            parts.append(_decode(runner, model, part_inputs, cfg,
                                 seed=cfg.seed if seed is None else seed,
                                 row_ids=torch.arange(rows.start, rows.stop, device=device) +
                                 offset))
            kv_bytes = max(kv_bytes, runner.kv_cache_bytes())
            runner.release()
            if on_micro_batch is not None:
                on_micro_batch(rows, _assemble(part_inputs, *parts[-1], cfg,
                                               group_ids=group_ids[rows]).batch)
        seq, lp, flp, resp_len = (torch.cat([part[i] for part in parts]) for i in range(4))
        steps = max(part[4] for part in parts)
    finally:
        for chunk, mode in zip(runner.chunks, modes):
            chunk.train(mode)
    out = _assemble(inputs, seq, lp, flp, resp_len, steps, cfg, group_ids=group_ids)
    return dataclasses.replace(out, kv_cache_bytes=kv_bytes)


def _generate_continuous(model: BuiltModel, inputs: LeftPadded, cfg: GenerationConfig, *,
                         seed: int, row_ids: Tensor, group_ids: Tensor,
                         on_micro_batch: Optional[OnMicroBatch]) -> Generation:
    """generate_detailed with rollout/continuous.py's engine; on_micro_batch is called per group
    of samples_per_prompt rows as soon as the group has stopped."""
    from rlad_megatron.rollout.continuous import decode_continuous

    chunks = model.modules
    modes = [chunk.training for chunk in chunks]
    state = {}

    def group_done(rows: slice) -> None:
        seq, lp, flp, made = state["buffers"]
        part = LeftPadded(inputs.tokens[rows], inputs.lengths[rows])
        on_micro_batch(rows, _assemble(part, seq[rows], lp[rows], flp[rows], made[rows], 0, cfg,
                                       group_ids=group_ids[rows]).batch)

    try:
        for chunk in chunks:
            chunk.eval()
        live = cfg.max_live_rows or cfg.micro_batch_size or inputs.tokens.shape[0]
        seq, lp, flp, made, steps, kv_bytes = decode_continuous(
            model, inputs, cfg, seed=seed, row_ids=row_ids, live=live,
            block_size=cfg.kv_block_size, group_size=cfg.samples_per_prompt, state=state,
            on_group_done=group_done if on_micro_batch is not None else None)
    finally:
        for chunk, mode in zip(chunks, modes):
            chunk.train(mode)
    out = _assemble(inputs, seq, lp, flp, made, steps, cfg, group_ids=group_ids)
    return dataclasses.replace(out, kv_cache_bytes=kv_bytes)


def _decode(runner: StageRunner, model: BuiltModel, inputs: LeftPadded, cfg: GenerationConfig,
            *, seed: int, row_ids: Tensor):
    """The decode loop in the working layout, on the device of inputs and row_ids (the compute
    device). Returns seq [b, P + N] (prompt and responses, pad after EOS), log-probs and
    filtered log-probs [b, P + N] float64 (at the response columns), response lengths [b] (all
    on that device) and the number of steps run."""
    b, p = inputs.tokens.shape
    n = cfg.max_new_tokens
    device = inputs.tokens.device
    seq, lp, flp = working_buffers(inputs, n, cfg.pad_token_id)
    valid = torch.ones((b, p + n), dtype=torch.bool, device=device)
    valid[:, :p] = inputs.valid
    done = torch.zeros(b, dtype=torch.bool, device=device)
    resp_len = torch.zeros(b, dtype=torch.long, device=device)
    eos = cfg.eos_ids().to(device)
    temperature = float(cfg.temperature)
    runner.start(b, p + n, cfg.use_cache)
    # disable=None: tqdm's own rule, no bar when stderr is not a terminal (a log file)
    bar = tqdm(total=n, desc="generate", unit="tok", leave=False,
               disable=True if not cfg.progress or (dist.is_initialized() and dist.get_rank() != 0)
               else None)
    steps = 0
    # inference_mode: no autograd bookkeeping in megatron's modules (the tensors returned are
    # made above, outside it, and only written to here); decode_kv_cache: runtime/mcore_compat.py
    with torch.inference_mode(), mcore_compat.decode_kv_cache(runner.chunks):
        for t in range(n):
            end = p + t  # columns [0, end) are known
            if t == 0 or not cfg.use_cache:
                cur = valid[:, :end]
                logits = runner.forward(seq[:, :end], positions(cur), prefill_mask(cur))
            else:
                logits = runner.forward(seq[:, end - 1:end], (inputs.lengths + t - 1)[:, None],
                                        decode_mask(valid[:, :end]))
            msg, stop = None, None
            if runner.is_last_stage:
                def sample(candidates: int):
                    return sample_next(logits, temperature=temperature, seed=seed, step=t,
                                       row_ids=row_ids, vocab_size=model.spec.vocab_size,
                                       top_k=cfg.top_k, top_p=cfg.top_p,
                                       tp_group=model.par.tp_group, top_p_candidates=candidates,
                                       defer_retry=True)
                out = sample(cfg.top_p_candidates)
                if out.retry is not None:  # top-p alone: its check and the stop check, one read
                    ended = (done | torch.isin(out.tokens, eos)).all()
                    retry, stop = torch.stack([out.retry, ended]).tolist()
                    if retry:  # rare: the nucleus reached past some rank's candidates
                        out, stop = sample(logits.shape[-1]), None
                msg = torch.stack([out.tokens.double(), out.logprobs, out.filtered_logprobs])
            msg = runner.share(msg, (3, b))
            live = ~done
            tok = torch.where(live, msg[0].long(), cfg.pad_token_id)
            seq[:, end] = tok
            lp[:, end] = torch.where(live, msg[1], 0.0)
            flp[:, end] = torch.where(live, msg[2], 0.0)
            resp_len += live.long()
            done |= live & torch.isin(tok, eos)
            steps = t + 1
            bar.update(1)
            # the step's one host read; every stage checks at the same steps (PP: same breaks)
            if (t + 1) % cfg.stop_check_every == 0 and (
                    stop if stop is not None else bool(done.all())):
                break
    bar.close()
    return seq, lp, flp, resp_len, steps


def _assemble(inputs: LeftPadded, seq: Tensor, lp: Tensor, flp: Tensor, resp_len: Tensor,
              steps: int, cfg: GenerationConfig, group_ids: Tensor) -> Generation:
    """Working layout -> RolloutBatch layout (see layout.py)."""
    p = inputs.tokens.shape[1]
    start = p - inputs.lengths
    total = inputs.lengths + resp_len
    cols = torch.arange(int(total.max()), device=seq.device)[None]
    loss_mask = (cols >= inputs.lengths[:, None]) & (cols < total[:, None])
    batch = RolloutBatch(
        tokens=right_padded(seq, start, total, cfg.pad_token_id),
        prompt_lengths=inputs.lengths.clone(),
        response_lengths=resp_len,
        loss_mask=loss_mask,
        sampler_logprobs=right_padded(lp, start, total, 0.0).float(),
        group_ids=group_ids,
    )
    return Generation(batch=batch, filtered_logprobs=right_padded(flp, start, total, 0.0).float(),
                      steps=steps)
