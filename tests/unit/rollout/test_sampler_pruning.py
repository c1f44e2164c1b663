"""The sampler's pruned Gumbel-max and row blocks (ops/sampling.py) give bitwise the
values of the whole-row computation they replace, single process. A failure points at the pruning
bounds, or at gumbel() no longer being elementwise (then the noise at a few gathered ids is not
the noise of the whole vocabulary at those ids).
"""

import torch

from rlad_megatron.ops import sampling


def test_pruned_gumbel_max_equals_the_max_over_the_whole_row():
    g = torch.Generator().manual_seed(1)
    for trial in range(120):
        b, n = 6, int(torch.randint(1, 2000, (1,), generator=g))
        scale = [0.01, 0.3, 1.0, 3.0, 10.0, 100.0][trial % 6]
        z = torch.randn(b, n, generator=g, dtype=torch.float64) * scale
        if trial % 4 == 0:
            z[:, : n // 2] = z[:, :1]  # ties in z
        u = sampling.uniforms(torch.arange(b) + 10 * trial, 0, trial, n)
        expected = (z + sampling.gumbel(u)).max(-1)
        best, loc = sampling._best_gumbel_max(z, u, *z.max(-1))
        assert torch.equal(best, expected.values) and torch.equal(loc, expected.indices), trial


def test_gumbel_noise_is_elementwise_wherever_the_element_sits():
    u = sampling.uniforms(torch.arange(4), 3, 9, 5000).flatten()
    u[:3] = torch.tensor([0.0, 1 - 2 ** -53, 1e-300], dtype=torch.float64)
    whole = sampling.gumbel(u)
    g = torch.Generator().manual_seed(0)
    for n in (1, 3, 5, 17, 33, 301):
        idx = torch.randint(0, u.numel(), (n,), generator=g)
        idx[0] = n % 3
        assert torch.equal(sampling.gumbel(u[idx]), whole[idx]), n


def test_sampler_row_blocks_give_each_row_what_it_gets_alone():
    vocab = 3000  # _BLOCK // vocab = 21 rows per block: 50 rows make three blocks
    logits = torch.randn(50, vocab + 8, generator=torch.Generator().manual_seed(2))
    rows = torch.arange(50) * 7 + 3
    together = sampling.sample_next(logits, temperature=0.9, seed=4, step=6, row_ids=rows,
                                    vocab_size=vocab)
    for i in (0, 20, 21, 42, 49):
        alone = sampling.sample_next(logits[i:i + 1], temperature=0.9, seed=4, step=6,
                                     row_ids=rows[i:i + 1], vocab_size=vocab)
        assert int(alone.tokens) == int(together.tokens[i])
        assert torch.equal(alone.logprobs, together.logprobs[i:i + 1])
