"""Continuous batching (rollout.engine=continuous): at most `max_live_rows` rows in flight on
megatron-core's DynamicInferenceContext; a row that stops frees its KV blocks and the next
waiting row is prefilled into the batch at the next step.

The static engine (generate.py `_decode`) runs a generation micro-batch until its longest row
ends, computing the rows that already stopped. Reasoning rollouts have long-tailed lengths, so
most of that work is waste (engine utilisation 1/tau, tau = the slowest row over the mean: the
Megatron-LM RL README's model). Here every step decodes the live rows only, and admits waiting
rows, in row order, while slots are free. A step's forward packs the live rows' new tokens (a
whole prompt for a row just admitted, one token for the others) into one [1, T] sequence;
megatron's attention reads each row's keys from the paged cache (runtime/paged_attention.py:
flash-attn on a GPU, a torch paged attention on the CPU).

Exactness: a row's token at position t uses the noise of (seed, t, row id) (ops/sampling.py,
`step` per row), which the static engine uses for the same token; the logits differ from the
static engine's only by the attention kernel's round-off, so the same tokens come out (checked
at TP=2, PP=2, DP=2) and log-probs equal within fp32 round-off. The output is generate.py's
working layout ([b, P + N] with row r's prompt right-aligned in the first P columns and its
t-th new token in column P + t), so `_assemble` makes the same RolloutBatch.

Pipeline: every model chunk holds a context with its own layers (megatron's attention indexes it
by the layer's number within the stage; with virtual stages by its number within the chunk,
runtime/paged_attention.py); all contexts take the same admissions and updates in the same
order, so they agree on the packed length T, which sizes the hidden states sent between stages.
The last stage samples; the tokens reach every stage with one broadcast (StageRunner.share).

Host reads per step: which rows stopped (to admit waiting rows), and the context's own
bookkeeping reads (megatron's update_requests counts the finished and paused rows).
`on_group_done(rows, part)` (teacher.score_during_rollout) is called with a group's rows (a
slice) as soon as all of them have stopped.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Callable, Optional

import torch
from torch import Tensor

from rlad_megatron.ops.sampling import sample_next
from rlad_megatron.rollout.layout import LeftPadded, working_buffers
from rlad_megatron.rollout.pipeline import StageRunner
from rlad_megatron.runtime import mcore_compat
from rlad_megatron.runtime.paged_attention import context_class, dynamic_attention


def kv_block_bytes(config, layers: int, tp: int, block_size: int) -> int:
    """Bytes of one KV block of `layers` layers: K and V, block_size tokens, kv heads / tp, head
    dim (megatron's block_size_bytes)."""
    groups = (config.num_query_groups or config.num_attention_heads) // tp
    dtype = config.pipeline_dtype or config.params_dtype
    return dtype.itemsize * 2 * layers * block_size * groups * config.kv_channels


class ContinuousStages(StageRunner):
    """This rank's chunks, each with a DynamicInferenceContext sized for `live` rows of at most
    `max_length` tokens (no row is ever paused for want of a block)."""

    def start_dynamic(self, model, *, live: int, max_length: int, prompt_tokens: int,
                      block_size: int) -> None:
        cfg = model.config
        blocks = live * math.ceil(max_length / block_size) + 2  # + megatron's dummy block
        self.contexts = []
        for chunk in self.chunks:
            layers = len(chunk.decoder.layers)
            one = kv_block_bytes(cfg, layers, model.par.tp, block_size)
            self.contexts.append(context_class()(
                num_layers=layers, params_dtype=self.dtype, kv_channels=cfg.kv_channels,
                num_attention_heads=cfg.num_query_groups or cfg.num_attention_heads,
                max_sequence_length=max_length,
                buffer_size_gb=(blocks + 0.5) * one / 1024 ** 3, max_requests=live,
                max_tokens=prompt_tokens + live, block_size_tokens=block_size,
                tensor_model_parallel_size=model.par.tp, pipeline_model_parallel_size=1,
                pg_collection=model.par.pg_collection,  # the model's groups, not megatron's
                materialize_only_last_token_logits=False))  # globals (a teacher's own layout)

    def step_forward(self) -> Optional[Tensor]:
        """One forward of the live rows' new tokens: [n_live, V/tp] logits of each row's last
        new token on the last stage, None elsewhere."""
        for ctx in self.contexts:
            ctx.initialize_attention_state()
        ids, pos = self.contexts[0].current_input_and_position_ids()  # [1, T]

        def run_chunk(v, chunk):
            ctx = self.contexts[v]
            kwargs = dict(inference_context=ctx, runtime_gather_output=True)
            if not chunk.post_process:
                return chunk(ids, pos, None, **kwargs)
            with mcore_compat.hidden_states_only(chunk):
                hidden = chunk(ids, pos, None, **kwargs)  # [T, 1, h]
            live = slice(ctx.paused_request_count, ctx.total_request_count)
            last = ctx.request_query_lengths[live].cumsum(0) - 1
            return self.vocab_logits(chunk, hidden[last])[:, 0]

        out = self.through_stages((ids.shape[1], 1, self.hidden), run_chunk)
        return out if self.is_last_stage else None

    def live_rows(self) -> Tensor:
        """[n_live] int64 row index of each live request, in the context's order."""
        ctx = self.contexts[0]
        return ctx.request_ids[ctx.paused_request_count:ctx.total_request_count].to(torch.long)

    def admit(self, row: int, prompt: Tensor, new_tokens: int) -> None:
        from megatron.core.inference.inference_request import DynamicInferenceRequest
        from megatron.core.inference.sampling_params import SamplingParams

        # the engine stops rows itself (EOS ids, max_new_tokens: `update`'s mask), so megatron's
        # own stop token is none (-1; left unset, megatron warns once per request)
        for ctx in self.contexts:
            ctx.add_request(DynamicInferenceRequest(
                request_id=row, prompt_tokens=prompt, sampling_params=SamplingParams(
                    num_tokens_to_generate=new_tokens, termination_id=-1)))

    def update(self, keep: Tensor, tokens: Tensor) -> None:
        for ctx in self.contexts:
            ctx.update_requests(active_requests_mask=keep.to(torch.uint8), new_tokens=tokens)

    def kv_cache_bytes(self) -> int:
        return sum(ctx.memory_buffer.numel() * ctx.memory_buffer.element_size()
                   for ctx in self.contexts or ())


OnGroupDone = Callable[[slice], None]


def decode_continuous(model, inputs: LeftPadded, cfg, *, seed: int, row_ids: Tensor,
                      live: int, block_size: int, group_size: int = 1,
                      on_group_done: Optional[OnGroupDone] = None,
                      state: Optional[dict] = None):
    """The continuous engine over all rows of `inputs` (left-padded [b, P] prompts on the compute
    device); returns what generate.py's `_decode` returns: seq, log-probs, filtered log-probs
    [b, P + N], response lengths [b] and the number of engine steps run. on_group_done(rows)
    is called once every row of a group of `group_size` consecutive rows has stopped; `state`
    ["buffers"] then holds (seq, log-probs, filtered log-probs, new-token counts) to read its rows
    from."""
    b, p = inputs.tokens.shape
    n = cfg.max_new_tokens
    device = inputs.tokens.device
    seq, lp, flp = working_buffers(inputs, n, cfg.pad_token_id)
    made = torch.zeros(b, dtype=torch.long, device=device)  # new tokens so far, per row
    if state is not None:
        state["buffers"] = (seq, lp, flp, made)
    eos = cfg.eos_ids().to(device)
    lengths = inputs.lengths.tolist()
    runner = ContinuousStages(model)
    live = max(1, min(live, b))
    runner.start_dynamic(model, live=live, max_length=p + n, block_size=block_size,
                         prompt_tokens=live * p)
    waiting, in_flight, steps = deque(range(b)), 0, 0
    left_in_group = [group_size] * math.ceil(b / group_size)
    with torch.inference_mode(), dynamic_attention(runner.chunks, live, p + n):
        while waiting or in_flight:
            while waiting and in_flight < live:
                row = waiting.popleft()
                runner.admit(row, inputs.tokens[row, p - lengths[row]:], n)
                in_flight += 1
            logits = runner.step_forward()
            rows = runner.live_rows()
            msg = None
            if runner.is_last_stage:
                out = sample_next(logits, temperature=float(cfg.temperature), seed=seed,
                                  step=made[rows], row_ids=row_ids[rows],
                                  vocab_size=model.spec.vocab_size, top_k=cfg.top_k,
                                  top_p=cfg.top_p, tp_group=model.par.tp_group,
                                  top_p_candidates=cfg.top_p_candidates)
                msg = torch.stack([out.tokens.double(), out.logprobs, out.filtered_logprobs])
            msg = runner.share(msg, (3, len(rows)))
            tok = msg[0].long()
            cols = p + made[rows]
            seq[rows, cols] = tok
            lp[rows, cols] = msg[1]
            flp[rows, cols] = msg[2]
            made[rows] += 1
            ended = torch.isin(tok, eos) | (made[rows] >= n)
            runner.update(~ended, tok)
            steps += 1
            done = rows[ended].tolist()  # the step's host read
            in_flight -= len(done)
            for row in sorted(done):
                group = row // group_size
                left_in_group[group] -= 1
                if on_group_done is not None and left_in_group[group] == 0:
                    # outside inference mode: what the hook makes (the teacher's log-probs)
                    # meets the update's autograd later (as the static engine's hook does)
                    with torch.inference_mode(False):
                        on_group_done(slice(group * group_size,
                                            min((group + 1) * group_size, b)))
    return seq, lp, flp, made, steps, runner.kv_cache_bytes()
