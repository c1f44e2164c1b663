"""KV-cached generation (rlad_megatron.rollout) at DP=2, TP=2, PP=2 and PP=2 x VPP=2, against a
float64 reference sampler that recomputes the whole sequence every step (no cache), one prompt at
a time (no padding), with the same deterministic Gumbel noise on the full vocabulary.

Guards: the KV cache, masks and cache offsets (pipeline.py), left/right padded prompts of
different lengths (layout.py), the vocab-parallel sampler and its TP invariance (ops/sampling.py),
the PP hand-off of hidden states and tokens, the log-probs and the RolloutBatch alignment, EOS.
Where a failure points: greedy tokens wrong with use_cache=True only -> cache/mask/offset; only at
tp2 -> vocab-parallel sampling; only at pp2 -> stage p2p or the token broadcast; tokens right but
log-probs off -> the alignment of RolloutBatch (position t holds the value for tokens[:, t]).
The model has a padded vocabulary (250 real ids of 256), so padding ids must never be sampled.
The continuous engine (rollout.engine=continuous: megatron's dynamic context, rows admitted as
others stop, paged KV blocks of 4 tokens so that rows cross blocks) is held to the same
reference at every layout, with at most 2 live rows so that rows wait and take freed slots;
at PP=2 x VPP=2 each rank's two chunks hold a context each (runtime/paged_attention.py).
"""

import dataclasses
import math
from functools import lru_cache

import pytest
import torch

from distributed_helpers import assert_all_ranks, assert_close_all_ranks
from reference_llama import logits as reference_logits
from reference_llama import random_hf_weights
from rlad_megatron.convert.layout import load_hf_tensors
from rlad_megatron.models.build import OptimizerSettings, build_student, build_teacher
from rlad_megatron.models.forward import forward_logprobs
from rlad_megatron.models.spec import get_preset
from rlad_megatron.rollout import GenerationConfig, generate, generate_detailed, gumbel_noise

LAYOUTS = [(1, 1), (2, 1), (1, 2), (1, 2, 2)]
LAYOUT_IDS = ["dp2", "tp2", "pp2", "pp2-vpp2"]
VOCAB = 250
PROMPTS = [[5, 17, 99, 3, 42], [7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17], [200],
           [1, 2, 3, 4, 5, 6, 7, 8], [31, 41, 59], [26, 53, 58, 97, 93, 23]]
NEW = 10
# fp32 megatron (KV cache) against the float64 reference: round-off ~1e-6 on log-probs ~ -3;
# 1e-5 (10x that) bounds sampler vs teacher-forced log-probs.
LOGPROB_ATOL = 1e-5
CONTINUOUS = dict(engine="continuous", max_live_rows=2, kv_block_size=4)
ENGINES = {"static": {"engine": "static"}, "continuous": CONTINUOUS}


def _spec():
    return get_preset("tiny-llama", num_layers=4, vocab_size=VOCAB)


@lru_cache(maxsize=1)
def _weights():
    return random_hf_weights(_spec(), seed=11)


def _load(model):
    weights, par = _weights(), model.par
    load_hf_tensors(model.chunks, lambda n: weights[n].float(), spec=model.spec, tp=par.tp,
                    tp_rank=par.tp_rank, padded_vocab=model.padded_vocab_size)
    return model


def _keep(z, top_k, top_p):
    """Full-vocabulary top-k then top-p, from the definition: sort by (z desc, id asc)."""
    order = torch.argsort(-z, stable=True)
    keep_sorted = torch.ones(z.numel(), dtype=torch.bool)
    if top_k:
        keep_sorted[top_k:] = False
    p = torch.softmax(torch.where(keep_sorted, z[order], -math.inf), -1)
    keep_sorted &= (p.cumsum(0) - p) < top_p
    keep = torch.zeros_like(keep_sorted)
    keep[order] = keep_sorted
    return keep


@lru_cache(maxsize=None)
def reference(temperature=0.0, top_k=0, top_p=1.0, seed=0, samples=1, eos=()):
    """Per global row (prompt r // samples): (response tokens, log-probs, filtered log-probs)."""
    spec, weights = _spec(), _weights()
    out = []
    for row in range(len(PROMPTS) * samples):
        seq, lps, flps = list(PROMPTS[row // samples]), [], []
        for step in range(NEW):
            x = reference_logits(spec, weights, torch.tensor([seq]))[0, -1]
            if temperature == 0:
                z, keep = x, torch.ones_like(x, dtype=torch.bool)
                tok = int(z.argmax())
            else:
                z = x / temperature
                keep = _keep(z, top_k, top_p)
                noise = gumbel_noise(torch.tensor([row]), step, seed, VOCAB)[0]
                tok = int(torch.where(keep, z + noise, -math.inf).argmax())
            lps.append(float(torch.log_softmax(z, -1)[tok]))
            flps.append(float(torch.log_softmax(torch.where(keep, z, -math.inf), -1)[tok]))
            seq.append(tok)
            if tok in eos:
                break
        out.append((seq[len(PROMPTS[row // samples]):], lps, flps))
    return out


def _my_prompts(par):
    """This DP rank's prompts: a contiguous slice of PROMPTS (all of them when DP = 1)."""
    n = len(PROMPTS) // par.dp
    return list(range(par.dp_rank * n, (par.dp_rank + 1) * n))


def _padded(prompt_ids, side):
    rows = [PROMPTS[i] for i in prompt_ids]
    width = max(map(len, rows))
    tokens = torch.full((len(rows), width), 3, dtype=torch.long)  # a real id as padding
    for i, row in enumerate(rows):
        start = 0 if side == "right" else width - len(row)
        tokens[i, start:start + len(row)] = torch.tensor(row)
    return tokens, torch.tensor([len(r) for r in rows])


def _check_against_reference(batch, ref, rows, what, filtered=None):
    """batch rows i <-> global reference rows rows[i]: tokens, lengths, masks, log-probs."""
    tokens_ok, expected_lp, expected_flp, masks_ok = True, [], [], True
    for i, row in enumerate(rows):
        resp, lps, flps = ref[row]
        p, r = int(batch.prompt_lengths[i]), int(batch.response_lengths[i])
        tokens_ok &= r == len(resp) and batch.tokens[i, p:p + r].tolist() == resp
        mask = torch.zeros(batch.seq_len, dtype=torch.bool)
        mask[p:p + r] = True
        masks_ok &= torch.equal(batch.loss_mask[i], mask)
        expected_lp.append(torch.zeros(batch.seq_len, dtype=torch.float64))
        expected_lp[-1][p:p + len(lps)] = torch.tensor(lps[:r])
        expected_flp.append(torch.zeros(batch.seq_len, dtype=torch.float64))
        expected_flp[-1][p:p + len(flps)] = torch.tensor(flps[:r])
    assert_all_ranks(tokens_ok, f"{what}: responses differ from the float64 reference:\n"
                                f"{batch.tokens.tolist()}\nvs {[ref[r][0] for r in rows]}")
    assert_all_ranks(masks_ok, f"{what}: loss_mask is not exactly the response tokens")
    assert_close_all_ranks(batch.sampler_logprobs, torch.stack(expected_lp), rtol=0,
                           atol=LOGPROB_ATOL, what=f"{what}: sampler log-probs")
    if filtered is not None:
        assert_close_all_ranks(filtered, torch.stack(expected_flp), rtol=0, atol=LOGPROB_ATOL,
                               what=f"{what}: filtered log-probs")


@pytest.mark.parametrize("parallel", LAYOUTS, indirect=True, ids=LAYOUT_IDS)
@pytest.mark.parametrize("side", ["left", "right"])
def test_kv_cached_greedy_equals_no_cache_and_float64_reference(parallel, side):
    model = _load(build_teacher(_spec(), parallel))
    mine = _my_prompts(parallel)
    tokens, lengths = _padded(mine, side)
    cfg = GenerationConfig(max_new_tokens=NEW, temperature=0.0, progress=False, engine="static")
    cached = generate(model, tokens, cfg, prompt_lengths=lengths, padding_side=side)
    recomputed = generate(model, tokens, dataclasses.replace(cfg, use_cache=False),
                          prompt_lengths=lengths, padding_side=side)
    what = f"{parallel.describe()} {side}-padded greedy"
    assert_all_ranks(torch.equal(cached.tokens, recomputed.tokens),
                     f"{what}: KV cache {cached.tokens.tolist()} vs no cache "
                     f"{recomputed.tokens.tolist()}")
    _check_against_reference(cached, reference(), mine, what)
    assert_close_all_ranks(cached.sampler_logprobs, recomputed.sampler_logprobs, rtol=0,
                           atol=LOGPROB_ATOL, what=f"{what}: cache vs no-cache log-probs")


@pytest.mark.parametrize("parallel", LAYOUTS, indirect=True, ids=LAYOUT_IDS)
@pytest.mark.parametrize("temperature,top_k,top_p,candidates", [
    (1.0, 0, 1.0, 256), (0.7, 40, 0.9, 256), (1.3, 0, 0.8, 4)],
    ids=["plain", "topk40-topp0.9", "topp0.8-fallback"])
@pytest.mark.parametrize("engine", ENGINES)
def test_seeded_sampling_is_layout_invariant_and_matches_float64_reference(
        parallel, temperature, top_k, top_p, candidates, engine):
    model = _load(build_teacher(_spec(), parallel))
    mine = _my_prompts(parallel)
    samples, seed = 2, 1234
    cfg = GenerationConfig(max_new_tokens=NEW, temperature=temperature, top_k=top_k, top_p=top_p,
                           samples_per_prompt=samples, seed=seed, progress=False,
                           top_p_candidates=candidates, **ENGINES[engine])
    out = generate_detailed(model, [PROMPTS[i] for i in mine], cfg)
    rows = [i * samples + g for i in mine for g in range(samples)]  # global rows (row_offset)
    ref = reference(temperature, top_k, top_p, seed, samples)
    _check_against_reference(out.batch, ref, rows, f"{parallel.describe()} T={temperature} "
                             f"top_k={top_k} top_p={top_p}", filtered=out.filtered_logprobs)
    assert_all_ranks(out.batch.group_ids.tolist() == [r // samples for r in rows],
                     f"group ids {out.batch.group_ids.tolist()}")


@pytest.mark.parametrize("parallel", [(2, 1), (1, 2)], indirect=True, ids=["tp2", "pp2"])
def test_sampler_logprobs_equal_teacher_forced_forward_logprobs_of_the_ddp_student(parallel):
    student = _load(build_student(_spec(), parallel, OptimizerSettings()))
    temperature = 0.8
    batch = generate(student, PROMPTS, GenerationConfig(max_new_tokens=NEW, temperature=temperature,
                                                        seed=3, progress=False))
    assert_all_ranks(all(module.training for module in student.modules),
                     "generate must restore the student's train mode")
    forced = forward_logprobs(student, batch.tokens, micro_batch_size=len(PROMPTS),
                              temperature=temperature)
    if parallel.is_last_stage:
        expected = torch.where(batch.loss_mask, forced, 0.0)
        assert_close_all_ranks(batch.sampler_logprobs, expected, rtol=0, atol=LOGPROB_ATOL,
                               what=f"{parallel.describe()} sampler vs teacher-forced log-probs")
    else:
        assert_all_ranks(forced is None, "forward_logprobs returns None off the last stage")


@pytest.mark.parametrize("parallel", [(2, 1)], indirect=True, ids=["tp2"])
def test_near_zero_temperature_equals_greedy(parallel):
    model = _load(build_teacher(_spec(), parallel))
    cold = generate(model, PROMPTS, GenerationConfig(max_new_tokens=NEW, temperature=1e-5,
                                                     seed=5, progress=False))
    greedy = generate(model, PROMPTS, GenerationConfig(max_new_tokens=NEW, temperature=0.0,
                                                       progress=False))
    assert_all_ranks(torch.equal(cold.tokens, greedy.tokens),
                     f"T=1e-5 {cold.tokens.tolist()} vs greedy {greedy.tokens.tolist()}")


@pytest.mark.parametrize("parallel", [(2, 1), (1, 2)], indirect=True, ids=["tp2", "pp2"])
@pytest.mark.parametrize("engine", ENGINES)
def test_eos_stops_each_row_and_the_mask_excludes_what_follows(parallel, engine):
    model = _load(build_teacher(_spec(), parallel))
    free = reference()
    eos = free[0][0][2]  # row 0's third greedy token
    cfg = GenerationConfig(max_new_tokens=NEW, temperature=0.0, eos_token_id=eos, pad_token_id=0,
                           progress=False, **ENGINES[engine])
    out = generate_detailed(model, PROMPTS, cfg)
    batch = out.batch
    what = f"{parallel.describe()} eos={eos}"
    _check_against_reference(batch, reference(eos=(eos,)), range(len(PROMPTS)), what)
    first = free[0][0].index(eos)
    assert_all_ranks(int(batch.response_lengths[0]) == first + 1,
                     f"{what}: row 0 must stop at its first EOS (index {first})")
    ends = batch.prompt_lengths + batch.response_lengths
    after = torch.arange(batch.seq_len)[None] >= ends[:, None]
    assert_all_ranks(bool((batch.tokens[after] == 0).all()) and not bool(batch.loss_mask[after].any())
                     and bool((batch.sampler_logprobs[after] == 0).all()),
                     f"{what}: after EOS tokens must be padding with mask 0 and log-prob 0")
    # every row's second token as EOS: all rows stop by step 2, so the loop stops early
    eos_all = sorted({resp[1] for resp, _, _ in free})
    early = generate_detailed(model, PROMPTS, GenerationConfig(
        max_new_tokens=NEW, temperature=0.0, eos_token_id=eos_all, progress=False))  # static
    assert_all_ranks(early.steps <= 2 and int(early.batch.response_lengths.max()) <= 2,
                     f"{what}: steps {early.steps}, lengths {early.batch.response_lengths.tolist()}")
    _check_against_reference(early.batch, reference(eos=tuple(eos_all)), range(len(PROMPTS)),
                             f"{what} (all rows)")


@pytest.mark.parametrize("parallel", [(2, 1), (1, 2)], indirect=True, ids=["tp2", "pp2"])
@pytest.mark.parametrize("micro", [1, 3])
def test_generation_micro_batches_equal_one_batch(parallel, micro):
    """rollout.micro_batch_size bounds the rows generated together (KV cache, logits); the noise
    is keyed by row id, so the samples, their log-probs and the stopping are the one-batch ones
    (3 prompts x 2 samples: micro 3 splits them 3 + 3, micro 1 row by row), with an EOS that
    stops some rows early. Tokens are equal; log-probs equal to fp32 rounding."""
    model = _load(build_teacher(_spec(), parallel))
    eos = reference()[0][0][2]
    cfg = GenerationConfig(max_new_tokens=NEW, temperature=1.0, top_k=40, eos_token_id=eos,
                           samples_per_prompt=2, progress=False, engine="static")
    whole = generate_detailed(model, PROMPTS, cfg, seed=7)
    parts = generate_detailed(model, PROMPTS, dataclasses.replace(cfg, micro_batch_size=micro),
                              seed=7)
    what = f"{parallel.describe()} micro_batch_size={micro}"
    a, b = whole.batch, parts.batch
    assert_all_ranks(torch.equal(a.tokens, b.tokens) and torch.equal(a.response_lengths,
                                                                      b.response_lengths)
                     and torch.equal(a.loss_mask, b.loss_mask) and whole.steps == parts.steps,
                     f"{what}: {a.tokens.tolist()} vs {b.tokens.tolist()}")
    # fp32 kernels at another batch size round differently: the cache vs no-cache tolerance
    assert_close_all_ranks(a.sampler_logprobs, b.sampler_logprobs, rtol=0, atol=LOGPROB_ATOL,
                           what=f"{what}: log-probs")


@pytest.mark.parametrize("parallel", [(2, 1), (1, 2)], indirect=True, ids=["tp2", "pp2"])
def test_kv_cache_held_matches_the_planner(parallel):
    """The KV cache a rank holds during generation is what `rlad plan` counts for it
    (launch/memory.py: 2 * L/pp * groups/tp * head_dim * (prompt + response) * rollout batch *
    bytes), with and without generation micro-batches."""
    from rlad_megatron.launch.memory import Workload, estimate

    spec = _spec()
    model = _load(build_teacher(spec, parallel))
    width = max(len(p) for p in PROMPTS)
    for micro in (0, 2):
        cfg = GenerationConfig(max_new_tokens=NEW, temperature=1.0, samples_per_prompt=2,
                               micro_batch_size=micro, progress=False, engine="static")
        out = generate_detailed(model, PROMPTS, cfg, seed=3)
        rows = len(PROMPTS) * 2
        w = Workload(prompt_len=width, response_len=NEW, rollout_micro_batch=micro,
                     prompts_per_step=len(PROMPTS), group_size=2, student_dtype="fp32",
                     rollout_engine="static")
        planned = estimate(spec, spec, parallel.tp, parallel.pp, 1, w).kv_cache
        assert_all_ranks(out.kv_cache_bytes == planned,
                         f"micro {micro or rows}: held {out.kv_cache_bytes} bytes, planned {planned}")
    # the continuous engine's block pool (megatron's DynamicInferenceContext memory buffer)
    cfg = GenerationConfig(max_new_tokens=NEW, temperature=1.0, samples_per_prompt=2,
                           progress=False, **CONTINUOUS)
    out = generate_detailed(model, PROMPTS, cfg, seed=3)
    w = Workload(prompt_len=width, response_len=NEW, prompts_per_step=len(PROMPTS), group_size=2,
                 student_dtype="fp32", rollout_engine="continuous",
                 max_live_rows=CONTINUOUS["max_live_rows"],
                 kv_block_size=CONTINUOUS["kv_block_size"])
    planned = estimate(spec, spec, parallel.tp, parallel.pp, 1, w).kv_cache
    assert_all_ranks(out.kv_cache_bytes == planned,
                     f"continuous: held {out.kv_cache_bytes} bytes, planned {planned}")


@pytest.mark.parametrize("parallel", [(2, 1), (1, 2)], indirect=True, ids=["tp2", "pp2"])
@pytest.mark.parametrize("filters", [{"top_k": 40}, {"top_p": 0.9, "top_p_candidates": 16}],
                         ids=["top-k", "top-p-alone"])
def test_reading_the_stop_flag_every_k_steps_gives_the_same_samples(parallel, filters):
    """GenerationConfig.stop_check_every = 3 (the decode loop's host read every third step): the
    same tokens, lengths, masks and log-probs as reading it every step, the loop stopping at the
    first check after every row ended (every stage at the same step: PP would hang otherwise);
    top-p alone (its candidate check read with the stop flag every step) too."""
    model = _load(build_teacher(_spec(), parallel))
    eos = [i for i in range(VOCAB) if i % 4]  # 3/4 of the ids end a row: rows stop early
    cfg = GenerationConfig(max_new_tokens=NEW, temperature=1.0, eos_token_id=eos,
                           samples_per_prompt=2, progress=False, engine="static", **filters)
    every = generate_detailed(model, PROMPTS, cfg, seed=5)
    third = generate_detailed(model, PROMPTS, dataclasses.replace(cfg, stop_check_every=3),
                              seed=5)
    a, b = every.batch, third.batch
    expected = min(NEW, -(-every.steps // 3) * 3)
    what = f"{parallel.describe()} {filters}: steps {every.steps} -> {third.steps}"
    assert_all_ranks(every.steps < NEW and third.steps == expected,
                     f"{what}, lengths {a.response_lengths.tolist()}")
    assert_all_ranks(all(torch.equal(getattr(a, k), getattr(b, k)) for k in (
        "tokens", "response_lengths", "loss_mask", "sampler_logprobs")) and torch.equal(
        every.filtered_logprobs, third.filtered_logprobs), f"{what}: samples differ")


@pytest.mark.parametrize("parallel", LAYOUTS, indirect=True, ids=LAYOUT_IDS)
@pytest.mark.parametrize("live", [1, 3])
def test_continuous_engine_equals_static_and_reports_each_group_once_when_it_stops(parallel,
                                                                                   live):
    """rollout.engine=continuous with `live` rows in flight (the others wait for a slot) gives
    the static engine's tokens, lengths and masks, log-probs within fp32 round-off (another
    attention kernel), and calls on_micro_batch once per group of G rows, as soon as the group has
    stopped, with those rows as they stand in the final batch."""
    model = _load(build_teacher(_spec(), parallel))
    eos = reference()[0][0][2]
    prompts = [PROMPTS[i] for i in _my_prompts(parallel)]
    cfg = GenerationConfig(max_new_tokens=NEW, temperature=1.0, top_k=40, eos_token_id=eos,
                           samples_per_prompt=2, progress=False)
    static = generate_detailed(model, prompts, cfg, seed=7)
    groups = []
    cont = generate_detailed(model, prompts, dataclasses.replace(
        cfg, engine="continuous", max_live_rows=live, kv_block_size=4), seed=7,
        on_micro_batch=lambda rows, part: groups.append((rows, part)))
    what = f"{parallel.describe()} continuous, {live} live rows"
    a, b = static.batch, cont.batch
    assert_all_ranks(torch.equal(a.tokens, b.tokens) and torch.equal(a.response_lengths,
                                                                      b.response_lengths)
                     and torch.equal(a.loss_mask, b.loss_mask),
                     f"{what}: {a.tokens.tolist()} vs {b.tokens.tolist()}")
    assert_close_all_ranks(a.sampler_logprobs, b.sampler_logprobs, rtol=0, atol=LOGPROB_ATOL,
                           what=f"{what}: log-probs")
    assert_close_all_ranks(static.filtered_logprobs, cont.filtered_logprobs, rtol=0,
                           atol=LOGPROB_ATOL, what=f"{what}: filtered log-probs")
    starts = sorted(rows.start for rows, _ in groups)
    parts_ok = all(torch.equal(part.tokens, b.tokens[rows, :part.seq_len]) and
                   torch.equal(part.group_ids, b.group_ids[rows]) for rows, part in groups)
    assert_all_ranks(starts == list(range(0, b.batch_size, 2)) and parts_ok,
                     f"{what}: groups reported {[(r.start, r.stop) for r, _ in groups]}")
