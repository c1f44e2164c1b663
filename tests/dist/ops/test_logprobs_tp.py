"""rlad_megatron.ops under TP=2 (the whole 2-rank world as the TP group) against an independent
float64 full-vocabulary reference: the unsharded logits are built identically on every rank,
torch.log_softmax runs on them in float64, and each rank compares its result (and its gradient
shard, against the reference gradient's slice) with assert_close_all_ranks.

Start here when a log-prob differs between TP=1 and TP=2: a wrong shard offset, a padding entry
that counts, or a missing all-reduce shows up on exactly one of the tests below.
"""

import pytest
import torch
import torch.distributed as dist

from distributed_helpers import assert_all_ranks, assert_close_all_ranks
from rlad_megatron.ops import fused_token_logprobs, token_entropy, token_logprobs

TP = 2
# fp32 has eps = 1.2e-7; each result is a difference of a few rounded terms of size O(1..20).
RTOL = 1e-6
# log S and H carry the rounding of S (>= 1) in fp32, an absolute floor of a few ulp(1) = 1.2e-7,
# so results near 0 (p_t ~ 1, H ~ 0) are compared absolutely.
ATOL = 5e-7
# Gradient entries: p << 1 carries eps * |log p| relative error from its exponent, and (1 - p) or
# (log p + H) cancel for some entries, so the absolute floor is relative to the gradient's scale.
GRAD_ATOL_SCALE = 1e-6

B, S, V_LOCAL = 2, 5, 16


@pytest.fixture(scope="module")
def tp():
    """(group, rank): the whole world, which these tests require to be 2 ranks."""
    assert dist.get_world_size() == TP, "run with torchrun --nproc-per-node 2"
    return dist.group.WORLD, dist.get_rank()


def full_inputs(seed, vocab_size=None, padding_value=None, s=S):
    """Unsharded [b, s, V] fp32 logits, tokens and output weights: the same on every rank."""
    gen = torch.Generator().manual_seed(seed)
    v = TP * V_LOCAL
    logits = (torch.randn(B, s, v, generator=gen, dtype=torch.float64) * 3).float()
    if padding_value is not None:
        logits[..., vocab_size:] = padding_value
    tokens = torch.randint(0, vocab_size or v, (B, s), generator=gen)
    weights = torch.randn(B, s, generator=gen, dtype=torch.float64)
    return logits, tokens, weights


def shard(full, rank):
    return full[..., rank * V_LOCAL:(rank + 1) * V_LOCAL].contiguous()


def reference(logits, tokens, temperature=1.0, vocab_size=None):
    """float64 (log-probs, entropy) over the first vocab_size entries; differentiable."""
    n = vocab_size or logits.shape[-1]
    logp = torch.log_softmax(logits[..., :n].double() / temperature, dim=-1)
    return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1), -(logp.exp() * logp).sum(-1)


def check_values_and_grads(tp, seed, *, temperature=1.0, vocab_size=None, chunk_size=None,
                           padding_value=None):
    group, rank = tp
    full, tokens, weights = full_inputs(seed, vocab_size, padding_value)
    kw = dict(temperature=temperature, vocab_size=vocab_size, chunk_size=chunk_size)
    x = shard(full, rank).requires_grad_(True)
    lp = token_logprobs(x, tokens, group, **kw)
    h = token_entropy(x, group, **kw)
    xr = full.double().requires_grad_(True)
    lp_ref, h_ref = reference(xr, tokens, temperature, vocab_size)
    what = f"rank {rank} T={temperature} vocab_size={vocab_size} chunk={chunk_size}"
    assert_all_ranks(lp.dtype == h.dtype == torch.float32, f"{what}: results must be fp32")
    assert_close_all_ranks(lp, lp_ref, rtol=RTOL, atol=ATOL, what=f"{what} logprobs")
    assert_close_all_ranks(h, h_ref, rtol=RTOL, atol=ATOL, what=f"{what} entropy")
    for name, ours, ref in (("logprobs", lp, lp_ref), ("entropy", h, h_ref)):
        g, = torch.autograd.grad((ours * weights).sum(), x)
        g_ref, = torch.autograd.grad((ref * weights).sum(), xr, retain_graph=True)
        g_ref = shard(g_ref, rank)
        assert_close_all_ranks(g, g_ref, rtol=RTOL, atol=GRAD_ATOL_SCALE * g_ref.abs().max().item(),
                               what=f"{what} d{name}/dlogits shard")
        if vocab_size is not None:
            padded = torch.arange(V_LOCAL) + rank * V_LOCAL >= vocab_size
            assert_all_ranks(bool((g[..., padded] == 0).all()),
                             f"{what}: padding entries got gradient from {name}")


def test_token_logprobs_tp2_matches_full_vocab_float64(tp):
    check_values_and_grads(tp, seed=0)


@pytest.mark.parametrize("temperature", [0.6, 1.7])
def test_temperature_divides_logits_before_softmax_tp2(tp, temperature):
    check_values_and_grads(tp, seed=1, temperature=temperature)


@pytest.mark.parametrize("chunk_size", [1, 2, 100])
def test_chunking_does_not_change_results_tp2(tp, chunk_size):
    check_values_and_grads(tp, seed=2, temperature=0.9, chunk_size=chunk_size)


def test_padded_vocab_rows_never_count(tp):
    """Padding on the last shard set far above the real logits: it would dominate if it counted."""
    check_values_and_grads(tp, seed=3, vocab_size=TP * V_LOCAL - 5, padding_value=60.0,
                           temperature=0.8, chunk_size=2)


def test_rank_holding_only_padding_contributes_nothing(tp):
    check_values_and_grads(tp, seed=4, vocab_size=V_LOCAL - 3, padding_value=60.0)


def test_results_are_identical_on_every_rank(tp):
    group, rank = tp
    full, tokens, _ = full_inputs(5)
    lp = token_logprobs(shard(full, rank), tokens, group, temperature=1.1)
    gathered = [torch.empty_like(lp) for _ in range(TP)]
    dist.all_gather(gathered, lp)
    assert_all_ranks(all(torch.equal(gathered[0], other) for other in gathered),
                     "ranks disagree on the log-probs")


@pytest.mark.parametrize("chunk_size", [1, None])
def test_fused_teacher_path_tp2_matches_unfused_and_float64(tp, chunk_size):
    group, rank = tp
    gen = torch.Generator().manual_seed(6)
    h, vocab = 12, TP * V_LOCAL - 3
    hidden = torch.randn(S, B, h, generator=gen)  # [s, b, h], the same on every rank
    weight = torch.randn(TP * V_LOCAL, h, generator=gen)
    tokens = torch.randint(0, vocab, (B, S), generator=gen)
    local_weight = weight[rank * V_LOCAL:(rank + 1) * V_LOCAL]
    fused = fused_token_logprobs(hidden, local_weight, tokens, group, temperature=0.7,
                                 chunk_size=chunk_size, vocab_size=vocab)
    local_logits = torch.matmul(hidden, local_weight.t()).transpose(0, 1).contiguous()
    unfused = token_logprobs(local_logits, tokens, group, temperature=0.7, vocab_size=vocab)
    full_logits = torch.matmul(hidden, weight.t()).transpose(0, 1)
    lp_ref, _ = reference(full_logits, tokens, 0.7, vocab)
    assert_close_all_ranks(fused, unfused, rtol=RTOL, atol=ATOL, what="fused vs unfused")
    assert_close_all_ranks(fused, lp_ref, rtol=RTOL, atol=ATOL, what="fused vs float64 reference")
