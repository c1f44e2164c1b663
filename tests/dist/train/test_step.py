"""The student update in the Megatron path: a pure loss inside megatron's schedule, on
vocab-parallel log-probs, against one float64 call of the same loss on the whole batch.

Layouts split the batch differently (DP=2 halves it, micro-batches of one sequence, TP shards the
vocabulary, PP/VPP run it through the pipeline), so a pass means the global-normaliser contract
and megatron's per-token loss scaling are exact. A failure limited to dp2 points at the DP
normalisation; one limited to tp2 at the vocab-parallel log-probs; to pp2 at the last-stage loss.
"""

import dataclasses

import pytest
import torch

from distributed_helpers import assert_all_ranks
from model_checks import dp_slice, load_weights, tiny_spec, assert_student_grads_match
from reference_llama import random_hf_weights, token_logprobs_and_entropy
from rlad_megatron.data.batch import TrainBatch
from rlad_megatron.losses import LossInputs, Normalisers
from rlad_megatron.models.build import OptimizerSettings, build_student
from rlad_megatron.config.algorithms import (GRPOLossConfig, ImitationConfig,
                                             KDRLLossConfig, SFTLossConfig, TRRDLossConfig)
from rlad_megatron.train.step import forward_backward, optimizer_step

LAYOUTS = [(1, 1), (2, 1), (1, 2), (1, 2, 2)]
LAYOUT_IDS = ["dp2", "tp2", "pp2", "pp2-vpp2"]
# The fp32 model's log-probs differ from float64 by ~1e-6 relative (a few 1e-6 absolute); the
# loss is a signed average of such terms and can be small, so the bound has an absolute part.
LOSS_RTOL, LOSS_ATOL = 1e-5, 2e-6

LOSSES = [
    TRRDLossConfig().build(step=1),
    TRRDLossConfig(alpha=0.3, agg="token_mean", clamp_grad="straight_through").build(step=1),
    GRPOLossConfig(agg="token_mean").build(step=1),
    KDRLLossConfig(beta_init=0.1, kl_estimator="k3").build(step=1),
    SFTLossConfig().build(step=1),
    TRRDLossConfig(kl_beta=0.2, kl_estimator="k2").build(step=1),
    ImitationConfig(distill_loss="ratio", weight=0.7, importance_cap=1.5).build(
        TRRDLossConfig(alpha=0.4).build(step=1), step=1),
    ImitationConfig(distill_loss="nll", weight=0.3).build(
        GRPOLossConfig(agg="token_mean", kl_beta=0.1).build(step=1), step=1),
]
LOSS_IDS = ["trrd", "trrd-a0.3-token-mean-st", "grpo-token-mean", "kdrl-k3", "sft",
            "trrd-refkl-k2", "joint-trrd-ratio", "joint-grpo-nll-refkl"]


def _batch(spec, weights, b=4, s=10, seed=0):
    """A TrainBatch whose old/teacher log-probs sit near the model's, so ratios are non-trivial."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, spec.vocab_size, (b, s), generator=g)
    prompt = torch.randint(2, 4, (b,), generator=g)
    response = torch.randint(3, s - 3, (b,), generator=g)
    pos = torch.arange(s)[None]
    mask = (pos >= prompt[:, None]) & (pos < (prompt + response)[:, None])
    lp, _ = token_logprobs_and_entropy(spec, weights, tokens)
    old = (lp + 0.15 * torch.randn(b, s, generator=g, dtype=torch.float64)).float()
    teacher = (lp + 0.8 * torch.randn(b, s, generator=g, dtype=torch.float64)).float()
    return TrainBatch(
        tokens=tokens, prompt_lengths=prompt, response_lengths=response, loss_mask=mask,
        sampler_logprobs=old, group_ids=torch.arange(b) // 2,
        rewards=torch.randn(b, generator=g), advantages=torch.randn(b, generator=g),
        old_logprobs=old, teacher_logprobs=teacher,
        teacher_mask=torch.rand(b, s, generator=g) > 0.3,
        ref_logprobs=(lp + 0.3 * torch.randn(b, s, generator=g, dtype=torch.float64)).float(),
        # distilled rows 0 and 1 only: under DP=2 one rank holds every distilled row and the
        # other none, so the distillation term's normaliser must be the global one
        distill_mask=mask & (torch.arange(b) < 2)[:, None])


def _float64_inputs(batch, **replace) -> LossInputs:
    """The batch's loss inputs, floating-point ones in float64, with `replace` substituted."""
    record = dataclasses.replace(LossInputs.from_record(batch), **replace)
    d = lambda t: t.double() if t is not None and t.is_floating_point() else t  # noqa: E731
    return LossInputs(**{f.name: d(getattr(record, f.name)) for f in dataclasses.fields(record)})


def _reference(spec, weights, batch, loss):
    w = {k: v.clone().requires_grad_(True) for k, v in weights.items()}
    lp, _ = token_logprobs_and_entropy(spec, w, batch.tokens)
    value, _ = loss(lp, _float64_inputs(batch), Normalisers())
    value.backward()
    return value.item(), {k: v.grad for k, v in w.items()}


def _reference_entropy(spec, weights, batch):
    """Float64 mean over loss tokens of H(pi(. | tokens[:t])), the distribution that drew
    token t."""
    _, h = token_logprobs_and_entropy(spec, weights, batch.tokens)
    return float(h[batch.loss_mask].mean())


def _case(parallel, loss, make_batch):
    """(student, spec, weights, batch, float64 loss, float64 grads, this DP rank's rows)."""
    spec = tiny_spec("tiny-llama", vocab_size=250)
    weights = random_hf_weights(spec, seed=9)
    student = build_student(spec, parallel, OptimizerSettings(lr=1e-3))
    load_weights(student, weights)
    batch = make_batch(spec, weights)
    ref_value, ref_grads = _reference(spec, weights, batch, loss)
    local = batch.select_rows(dp_slice(parallel, torch.arange(batch.batch_size)))
    return student, spec, weights, batch, ref_value, ref_grads, local


@pytest.mark.parametrize("parallel", LAYOUTS, indirect=True, ids=LAYOUT_IDS)
@pytest.mark.parametrize("loss", LOSSES, ids=LOSS_IDS)
def test_loss_and_gradients_in_megatron_path_match_one_float64_call(parallel, loss):
    student, spec, weights, batch, ref_value, ref_grads, local = _case(parallel, loss, _batch)
    metrics = forward_backward(student, local, loss, micro_batch_size=1)
    got = metrics[f"loss/{loss.name}"]
    assert_all_ranks(abs(got - ref_value) <= LOSS_ATOL + LOSS_RTOL * abs(ref_value),
                     f"{loss.name} loss {got} vs float64 {ref_value} at {parallel.describe()}")
    assert_student_grads_match(student, ref_grads, parallel, f"{loss.name} gradients")
    assert_all_ranks(metrics["count/seqs"] == batch.batch_size,
                     f"metrics count {metrics['count/seqs']} sequences, batch has "
                     f"{batch.batch_size}")
    entropy = _reference_entropy(spec, weights, batch)
    assert_all_ranks(abs(metrics["policy/entropy_mean"] - entropy) < 1e-5,
                     f"policy/entropy_mean {metrics['policy/entropy_mean']} vs float64 {entropy}")
    step = optimizer_step(student)
    assert_all_ranks(step["optim/step_ok"] == 1.0 and step["optim/grad_norm"] > 0, f"{step}")


@pytest.mark.parametrize("parallel", [(2, 1)], indirect=True, ids=["tp2"])
def test_micro_batch_must_divide_the_rank_batch(parallel):
    spec = tiny_spec("tiny-llama")
    student = build_student(spec, parallel, OptimizerSettings())
    batch = _batch(spec, random_hf_weights(spec), b=3)
    with pytest.raises(ValueError,
                       match="micro_batch_size: 2 does not divide the batch of 3 rows"):
        forward_backward(student, batch, GRPOLossConfig().build(step=1), micro_batch_size=2)


def _varied_batch(spec, weights, seed=3):
    """8 rows of 4..16 real tokens in a [8, 16] batch, lengths skewed by DP rank: under DP=2,
    rank 0 holds the four long rows and rank 1 the four short ones, so a token budget cuts them
    into different numbers of micro-batches unless the ranks agree."""
    g = torch.Generator().manual_seed(seed)
    b, s = 8, 16
    lengths = torch.tensor([16, 15, 13, 12, 6, 5, 5, 4])
    prompt = torch.full((b,), 2)
    batch = _batch(spec, weights, b=b, s=s, seed=seed)
    pos = torch.arange(s)[None]
    mask = (pos >= prompt[:, None]) & (pos < lengths[:, None])
    tokens = torch.where(pos < lengths[:, None], batch.tokens, 0)  # padding after each row
    return dataclasses.replace(
        batch, tokens=tokens, prompt_lengths=prompt, response_lengths=lengths - prompt,
        loss_mask=mask, distill_mask=mask & (torch.arange(b) % 3 == 0)[:, None],
        advantages=torch.randn(b, generator=g))


@pytest.mark.parametrize("parallel", LAYOUTS[:3], indirect=True, ids=LAYOUT_IDS[:3])
@pytest.mark.parametrize("loss", [LOSSES[1], LOSSES[6]], ids=["trrd-token-mean", "joint-trrd"])
def test_token_budget_micro_batches_give_the_float64_loss_and_gradients(parallel, loss):
    """train.max_tokens_per_micro_batch: rows sorted by length, cut under a 24-token budget and
    trimmed to their longest row give the loss and gradients of one float64 call on the whole
    padded batch; every rank (DP ranks with different lengths included) runs the same number of
    micro-batches, and fewer tokens are processed than with fixed micro-batches."""
    import torch.distributed as dist

    from rlad_megatron.data.micro_batches import row_lengths
    from rlad_megatron.train.step import micro_batch_plan

    student, _, _, _, ref_value, ref_grads, local = _case(parallel, loss, _varied_batch)
    lengths = row_lengths(local.prompt_lengths, local.response_lengths)
    plan = micro_batch_plan(parallel, lengths, local.seq_len, micro_batch_size=1, max_tokens=24)
    counts = [None] * dist.get_world_size()
    dist.all_gather_object(counts, len(plan))
    assert_all_ranks(len(set(counts)) == 1, f"micro-batch counts differ between ranks: {counts}")
    assert_all_ranks(plan.processed_tokens() < local.batch_size * local.seq_len and
                     all(w <= local.seq_len for w in plan.widths),
                     f"token budget processed {plan.processed_tokens()} tokens, widths "
                     f"{plan.widths}")
    metrics = forward_backward(student, local, loss, plan=plan)
    got = metrics[f"loss/{loss.name}"]
    assert_all_ranks(abs(got - ref_value) <= LOSS_ATOL + LOSS_RTOL * abs(ref_value),
                     f"{loss.name} loss {got} vs float64 {ref_value} at {parallel.describe()}")
    assert_student_grads_match(student, ref_grads, parallel, f"{loss.name} gradients")


@pytest.mark.parametrize("parallel", [(2, 1), (1, 2)], indirect=True, ids=["tp2", "pp2"])
def test_token_budget_log_prob_passes_equal_float64(parallel):
    """The old-policy pass (student) and the fused teacher pass over token-budget micro-batches
    of different shapes (PP: megatron's variable_seq_lengths) give the float64 log-probs on every
    real token and 0 past each row's end, and the next fixed-shape pass still works."""
    from rlad_megatron.data.micro_batches import row_lengths
    from rlad_megatron.models.build import build_teacher
    from rlad_megatron.models.forward import forward_logprobs
    from rlad_megatron.train.step import micro_batch_plan

    spec = tiny_spec("tiny-llama", vocab_size=250)
    weights = random_hf_weights(spec, seed=9)
    batch = _varied_batch(spec, weights)
    ref_lp, _ = token_logprobs_and_entropy(spec, weights, batch.tokens)
    lengths = row_lengths(batch.prompt_lengths, batch.response_lengths)
    real = torch.arange(batch.seq_len)[None] < lengths[:, None]
    plan = micro_batch_plan(parallel, lengths, batch.seq_len, micro_batch_size=1, max_tokens=30)
    student = build_student(spec, parallel, OptimizerSettings())
    teacher = build_teacher(spec, parallel)
    for model in (student, teacher):
        load_weights(model, weights)
    for model, fused in ((student, False), (teacher, True)):
        lp = forward_logprobs(model, batch.tokens, plan=plan, fused=fused)
        fixed = forward_logprobs(model, batch.tokens, micro_batch_size=4, fused=fused)
        if parallel.is_last_stage:
            err = float((lp.double() - ref_lp).abs()[real].max())
            assert_all_ranks(err < 1e-5 and torch.allclose(fixed[real], lp[real], atol=1e-5),
                             f"fused={fused}: max error {err} on real tokens")
        else:
            assert_all_ranks(lp is None and fixed is None, "non-last stages return None")


ON_POLICY_LOSSES = [LOSSES[0], LOSSES[2], LOSSES[3], LOSSES[5]]
ON_POLICY_IDS = ["trrd", "grpo-token-mean", "kdrl-k3", "trrd-refkl-k2"]


def _main_grads(student) -> list:
    return [p.main_grad.detach().clone() for c in student.chunks for p in c.module.parameters()]


@pytest.mark.parametrize("parallel", LAYOUTS[:3], indirect=True, ids=LAYOUT_IDS[:3])
@pytest.mark.parametrize("loss", ON_POLICY_LOSSES, ids=ON_POLICY_IDS)
def test_on_policy_update_without_old_logprobs_equals_the_pass_and_float64(parallel, loss):
    """The on-policy fast path (config/on_policy.py): a batch without old log-probs, whose loss
    reads the detached log-probs of the update's own forward, gives (a) the loss and gradients of
    one float64 call with lp_old = the float64 log-probs themselves, and (b) the same loss, loss
    metrics and gradients as the existing path, the old-policy pass over the same micro-batches
    followed by the update: bit for bit here, as both compute lp_old with the same fp32 kernels
    on the same weights (a tolerance would hide a wrong lp_old near ratio 1)."""
    from rlad_megatron.models.forward import forward_logprobs

    spec = tiny_spec("tiny-llama", vocab_size=250)
    weights = random_hf_weights(spec, seed=9)
    student = build_student(spec, parallel, OptimizerSettings(lr=1e-3))
    load_weights(student, weights)
    full = _batch(spec, weights)
    # float64 reference: lp_old is the reference's own lp, detached
    w = {k: v.clone().requires_grad_(True) for k, v in weights.items()}
    lp, _ = token_logprobs_and_entropy(spec, w, full.tokens)
    value, _ = loss(lp, _float64_inputs(full, old_logprobs=lp.detach()), Normalisers())
    value.backward()
    ref_value, ref_grads = value.item(), {k: v.grad for k, v in w.items()}

    local = full.select_rows(dp_slice(parallel, torch.arange(full.batch_size)))
    fast = forward_backward(student, dataclasses.replace(local, old_logprobs=None), loss,
                            micro_batch_size=1)
    got = fast[f"loss/{loss.name}"]
    assert_all_ranks(abs(got - ref_value) <= LOSS_ATOL + LOSS_RTOL * abs(ref_value),
                     f"on-policy {loss.name} loss {got} vs float64 {ref_value} at "
                     f"{parallel.describe()}")
    assert_student_grads_match(student, ref_grads, parallel, f"on-policy {loss.name} gradients")
    fast_grads = _main_grads(student)

    old = forward_logprobs(student, local.tokens, micro_batch_size=1, fused=False)
    old = old if parallel.is_last_stage else torch.zeros(local.tokens.shape)  # not read there
    passed = forward_backward(student, dataclasses.replace(local, old_logprobs=old), loss,
                              micro_batch_size=1)
    same_grads = all(torch.equal(a, b) for a, b in zip(fast_grads, _main_grads(student)))
    diffs = {k: (fast[k], passed[k]) for k in passed if fast.get(k) != passed[k]
             and not (fast.get(k) != fast.get(k) and passed[k] != passed[k])}  # NaN == NaN
    assert_all_ranks(same_grads and not diffs and set(fast) == set(passed),
                     f"on-policy vs old-log-prob pass at {parallel.describe()}: gradients "
                     f"equal {same_grads}, differing metrics {diffs}")
