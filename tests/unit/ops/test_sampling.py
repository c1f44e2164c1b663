"""rlad_megatron.ops.sampling and rollout/layout.py, single process (TP=1).

Guards the sampler's distributions (Gumbel-max draws from softmax(logits / T), cut by top-k and
top-p as documented), the log-probs it returns, greedy tie-breaking, the padded vocabulary, the
top-p candidate fallback, the noise's determinism, and the prompt padding normalisation.
Frequencies are checked on V = 8 with N = 10000 draws (one row id per draw, fixed seed, so every
run sees the same draws): a failure means a wrong distribution, not bad luck. A chi-square
statistic of df degrees of freedom is bounded by df + 6 * sqrt(2 * df) (about 6 standard
deviations; a correct sampler stays below it for these seeds, a wrong filter or temperature gives
values in the hundreds or thousands).
"""

import math

import pytest
import torch

from rlad_megatron.rollout.layout import left_padded, right_padded
from rlad_megatron.ops.sampling import gumbel_noise, sample_next

V = 8
N = 10000
# probabilities at T=1 about .39 .24 .14 .09 .05 .03 .02 .004, on shuffled ids
LOGITS = torch.tensor([2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -2.5])[
    torch.tensor([3, 0, 6, 1, 7, 4, 2, 5])]


def _draw(logits=LOGITS, *, seed=1, **kw):
    return sample_next(logits.expand(N, -1), seed=seed, step=0, row_ids=torch.arange(N),
                       vocab_size=kw.pop("vocab_size", V), **kw)


def _assert_frequencies(tokens, probs, what):
    """Zero counts off the support, chi-square bound on it."""
    counts = torch.bincount(tokens, minlength=probs.numel()).double()
    support = probs > 0
    assert counts[~support].sum() == 0, f"{what}: sampled outside the support: {counts.tolist()}"
    expected = N * probs[support].double()
    chi2 = float(((counts[support] - expected) ** 2 / expected).sum())
    df = int(support.sum()) - 1
    bound = df + 6 * math.sqrt(2 * max(df, 1))
    assert chi2 < bound, (f"{what}: chi2 {chi2:.1f} >= {bound:.1f}; counts {counts.tolist()}, "
                          f"expected {(N * probs.double()).tolist()}")


def _reference_keep(z, top_k, top_p):
    """Full-vocabulary filter written from the definition: sort by (z desc, id asc)."""
    order = torch.argsort(-z, stable=True)
    keep_sorted = torch.ones(V, dtype=torch.bool)
    if top_k:
        keep_sorted[top_k:] = False
    p = torch.where(keep_sorted,
                    torch.softmax(torch.where(keep_sorted, z[order], -math.inf), -1), 0)
    keep_sorted &= (p.cumsum(0) - p) < top_p
    keep = torch.zeros(V, dtype=torch.bool)
    keep[order] = keep_sorted
    return keep


def _filtered_probs(temperature, top_k=0, top_p=1.0):
    z = LOGITS.double() / temperature
    keep = _reference_keep(z, top_k, top_p)
    return torch.softmax(torch.where(keep, z, -math.inf), -1)


@pytest.mark.parametrize("temperature", [0.7, 1.0, 1.5])
def test_unfiltered_frequencies_match_softmax_of_logits_over_temperature(temperature):
    out = _draw(temperature=temperature)
    _assert_frequencies(out.tokens, torch.softmax(LOGITS.double() / temperature, -1),
                        f"T={temperature}")


def test_top_k_samples_only_the_k_largest_in_renormalised_proportions():
    out = _draw(temperature=1.2, top_k=3)
    probs = _filtered_probs(1.2, top_k=3)
    assert int((probs > 0).sum()) == 3
    _assert_frequencies(out.tokens, probs, "top_k=3")


@pytest.mark.parametrize("top_p,size", [(0.5, 2), (0.7, 3), (0.9, 5), (0.01, 1)])
def test_top_p_samples_the_smallest_prefix_with_mass_p(top_p, size):
    out = _draw(temperature=1.0, top_p=top_p)
    probs = _filtered_probs(1.0, top_p=top_p)
    # at T=1 the sorted probabilities are .39 .24 .14 .09 .05 ...: cumulative .39 .63 .78 .87 .92
    assert int((probs > 0).sum()) == size
    _assert_frequencies(out.tokens, probs, f"top_p={top_p}")


def test_top_k_then_top_p_renormalises_within_the_top_k():
    out = _draw(temperature=1.0, top_k=3, top_p=0.7)
    probs = _filtered_probs(1.0, top_k=3, top_p=0.7)
    # within the top 3 (.39 .24 .14 of .77): .51 .31 .18, so 0.7 keeps two
    assert int((probs > 0).sum()) == 2
    _assert_frequencies(out.tokens, probs, "top_k=3 top_p=0.7")


def test_logprobs_are_under_the_plain_policy_and_filtered_ones_under_the_filter():
    temperature = 0.8
    out = _draw(temperature=temperature, top_k=4, top_p=0.8)
    plain = torch.log_softmax(LOGITS.double() / temperature, -1)[out.tokens]
    filtered = _filtered_probs(temperature, top_k=4, top_p=0.8).log()[out.tokens]
    torch.testing.assert_close(out.logprobs, plain, rtol=0, atol=1e-12)
    torch.testing.assert_close(out.filtered_logprobs, filtered, rtol=0, atol=1e-12)
    unfiltered = _draw(temperature=temperature)
    assert torch.equal(unfiltered.logprobs, unfiltered.filtered_logprobs)


def test_top_p_with_few_candidates_falls_back_to_the_same_draws():
    flat = torch.linspace(0.3, 0.0, V)[torch.tensor([3, 0, 6, 1, 7, 4, 2, 5])]
    full = _draw(flat, temperature=1.0, top_p=0.8)
    few = _draw(flat, temperature=1.0, top_p=0.8, top_p_candidates=2)
    assert torch.equal(full.tokens, few.tokens)
    torch.testing.assert_close(full.filtered_logprobs, few.filtered_logprobs, rtol=0, atol=1e-12)
    nucleus = (torch.bincount(full.tokens, minlength=V) > 0).sum()
    # sorted probabilities .144 .138 .133 .127 .122 .117 .112 .107: mass before the 7th is .78
    assert int(nucleus) == 7  # wider than the 2 candidates: the fallback ran


def test_greedy_is_argmax_with_lowest_id_on_ties_and_ignores_filters():
    logits = torch.tensor([[0.0, 3.0, 1.0, 3.0, 2.0, 0.0, 0.0, 0.0],
                           [5.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 5.0]])
    out = sample_next(logits, temperature=0.0, seed=0, step=0, row_ids=torch.arange(2),
                      vocab_size=V, top_k=1, top_p=0.1)
    assert out.tokens.tolist() == [1, 0]
    torch.testing.assert_close(out.logprobs, torch.log_softmax(logits.double(), -1)[[0, 1], [1, 0]])


def test_padded_vocabulary_ids_are_never_sampled():
    logits = torch.cat([LOGITS, torch.full((4,), 50.0)])  # ids 8..11 are padding
    for kw in ({}, {"top_k": 3}, {"top_p": 0.9}):
        out = _draw(logits, temperature=1.0, **kw)
        assert int(out.tokens.max()) < V, kw
    greedy = _draw(logits, temperature=0.0)
    assert int(greedy.tokens.max()) < V


def test_noise_depends_only_on_seed_step_and_row_id():
    a = gumbel_noise(torch.tensor([3, 7]), step=2, seed=5, vocab_size=16)
    b = gumbel_noise(torch.tensor([7, 3, 9]), step=2, seed=5, vocab_size=16)
    assert torch.equal(a[0], b[1]) and torch.equal(a[1], b[0])
    assert not torch.equal(a, gumbel_noise(torch.tensor([3, 7]), step=3, seed=5, vocab_size=16))
    assert not torch.equal(a, gumbel_noise(torch.tensor([3, 7]), step=2, seed=6, vocab_size=16))
    # a longer vocabulary extends the same stream: ids keep their noise
    assert torch.equal(a, gumbel_noise(torch.tensor([3, 7]), step=2, seed=5, vocab_size=32)[:, :16])


def _splitmix_uniform(seed: int, step: int, row: int, token: int) -> float:
    """Independent reference in Python's unbounded integers: output `token` of the SplitMix64
    stream keyed by three SplitMix64 rounds over (seed, step, row), top 53 bits."""
    mask = (1 << 64) - 1

    def mix(x):
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & mask
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & mask
        return x ^ (x >> 31)

    key = 0
    for value in (seed, step, row):
        key = mix((key ^ (value & mask)) + 0x9E3779B97F4A7C15 & mask)
    return (mix((key + (token + 1) * 0x9E3779B97F4A7C15) & mask) >> 11) * 2.0 ** -53


def test_noise_is_the_integer_hash_computed_in_int64_tensor_ops():
    """The uniforms are a counter-based hash in wrapping int64 tensor ops (the device computes
    them; integer arithmetic is the same on every device): equal, bit for bit, to the same hash
    in Python's integers, at large row ids and seeds too; the ids of a vocabulary shard get the
    values of the whole vocabulary's row, and [b, n] id lists the values at those ids."""
    from rlad_megatron.ops.sampling import uniforms, uniforms_at

    rows = torch.tensor([0, 1, 12345, 2 ** 40 + 7])
    for seed, step in ((0, 0), (7, 3), (2 ** 62 + 11, 255)):
        u = uniforms(rows, step, seed, 300)
        for i, row in enumerate(rows.tolist()):
            for token in (0, 1, 17, 299):
                assert u[i, token].item() == _splitmix_uniform(seed, step, row, token)
        shard = uniforms_at(rows, step, seed, torch.arange(150, 300))
        assert torch.equal(shard, u[:, 150:])
        ids = torch.randint(0, 300, (4, 9), generator=torch.Generator().manual_seed(seed % 97))
        assert torch.equal(uniforms_at(rows, step, seed, ids), u.gather(1, ids))
    assert 0.0 <= float(u.min()) and float(u.max()) < 1.0


def test_a_step_per_row_draws_each_row_the_noise_of_its_own_step():
    """Continuous batching samples rows at different positions in one call (step: [b] int64):
    row i gets, bit for bit, the uniforms of the Python-integer hash at its own step, and
    sample_next draws what the same row draws alone at that step."""
    from rlad_megatron.ops.sampling import uniforms

    rows = torch.tensor([0, 1, 12345, 2 ** 40 + 7])
    steps = torch.tensor([0, 3, 255, 2 ** 33 + 1])
    for seed in (0, 2 ** 62 + 11):
        u = uniforms(rows, steps, seed, 300)
        for i, (row, step) in enumerate(zip(rows.tolist(), steps.tolist())):
            for token in (0, 17, 299):
                assert u[i, token].item() == _splitmix_uniform(seed, step, row, token)
    logits = torch.randn(4, 300, generator=torch.Generator().manual_seed(0))
    for top_k in (0, 20):  # the unfiltered (row-blocked) and the filtered sampler
        together = sample_next(logits, temperature=1.0, seed=5, step=steps, row_ids=rows,
                               vocab_size=300, top_k=top_k)
        for i in range(4):
            alone = sample_next(logits[i:i + 1], temperature=1.0, seed=5, step=int(steps[i]),
                                row_ids=rows[i:i + 1], vocab_size=300, top_k=top_k)
            assert int(alone.tokens[0]) == int(together.tokens[i])
            assert alone.logprobs[0].item() == together.logprobs[i].item()


def test_left_and_right_padded_and_list_prompts_normalise_alike():
    rows = [[5, 6, 7], [1], [2, 3, 4, 8, 9]]
    right = torch.tensor([[5, 6, 7, 0, 0], [1, 0, 0, 0, 0], [2, 3, 4, 8, 9]])
    left = torch.tensor([[0, 0, 5, 6, 7], [0, 0, 0, 0, 1], [2, 3, 4, 8, 9]])
    lengths = torch.tensor([3, 1, 5])
    a = left_padded(rows)
    b = left_padded(right, prompt_lengths=lengths, padding_side="right")
    c = left_padded(left, prompt_lengths=lengths, padding_side="left")
    for x in (b, c):
        assert torch.equal(a.tokens, x.tokens) and torch.equal(a.lengths, x.lengths)
    assert torch.equal(a.tokens, left)
    assert torch.equal(a.valid, left != 0)
    with pytest.raises(ValueError, match="empty"):
        left_padded([[1], []])


def test_right_padded_moves_each_row_to_column_zero():
    values = torch.tensor([[0, 0, 5, 6, 7, 1], [0, 2, 3, 4, 9, 9]])
    out = right_padded(values, start=torch.tensor([2, 1]), lengths=torch.tensor([3, 5]), fill=-1)
    assert out.tolist() == [[5, 6, 7, -1, -1], [2, 3, 4, 9, 9]]
