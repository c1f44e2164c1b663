"""rlad_megatron.ops on one process (tp_group None): token log-probs, entropy, their gradients and
the fused teacher path, against an independent float64 full-vocabulary reference
(torch.log_softmax on the same logits upcast to float64).

Start here when a log-prob or entropy changes value: every option (chunking, temperature, padded
vocabulary, dtype, layout) is checked against the same reference, so a failure names the option.
"""

import pytest
import torch

from rlad_megatron.ops import fused_token_logprobs, token_entropy, token_logprobs

# fp32 has eps = 1.2e-7; each result is a difference of a few rounded terms of size O(1..20).
RTOL = 1e-6
# log S and H carry the rounding of S (>= 1) in fp32, an absolute floor of a few ulp(1) = 1.2e-7,
# so results near 0 (p_t ~ 1, H ~ 0) are compared absolutely.
ATOL = 5e-7
# Gradient entries: p << 1 carries eps * |log p| relative error from its exponent, and (1 - p) or
# (log p + H) cancel for some entries, so the absolute floor is relative to the gradient's scale.
GRAD_ATOL_SCALE = 1e-6
# bf16 gradients are rounded to bf16 (8 bits of mantissa): relative 2^-8, plus the same scale floor.
BF16_RTOL = 2 ** -8

B, S, V = 2, 7, 40


def reference(logits, tokens, temperature=1.0, vocab_size=None):
    """float64 (log-probs, entropy) over the first vocab_size entries; differentiable."""
    n = vocab_size or logits.shape[-1]
    logp = torch.log_softmax(logits[..., :n].double() / temperature, dim=-1)
    return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1), -(logp.exp() * logp).sum(-1)


def make(seed=0, b=B, s=S, v=V, vocab_size=None, dtype=torch.float32, scale=3.0):
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(b, s, v, generator=gen, dtype=torch.float64) * scale).to(dtype)
    tokens = torch.randint(0, vocab_size or v, (b, s), generator=gen)
    weights = torch.randn(b, s, generator=gen, dtype=torch.float64)
    return logits, tokens, weights


def assert_close(actual, expected, *, rtol=RTOL, atol=ATOL, what=""):
    assert actual.shape == expected.shape, f"{what}: shapes {actual.shape} vs {expected.shape}"
    diff = (actual.double() - expected.double()).abs()
    bound = atol + rtol * expected.double().abs()
    assert bool((diff <= bound).all()), f"{what}: max |diff| {diff.max().item():.3e}"


def grads(logits, tokens, weights, temperature=1.0, vocab_size=None, chunk_size=None):
    """(ours, reference) gradients of sum(w * logprob) and sum(w * entropy) w.r.t. the logits."""
    x = logits.detach().clone().requires_grad_(True)
    xr = logits.detach().double().requires_grad_(True)
    kw = dict(temperature=temperature, vocab_size=vocab_size, chunk_size=chunk_size)
    lp_ref, h_ref = reference(xr, tokens, temperature, vocab_size)
    out = {}
    for name, ours, ref in (("logprobs", lambda: token_logprobs(x, tokens, **kw), lp_ref),
                            ("entropy", lambda: token_entropy(x, **kw), h_ref)):
        g, = torch.autograd.grad((ours() * weights).sum(), x)
        g_ref, = torch.autograd.grad((ref * weights).sum(), xr, retain_graph=True)
        out[name] = (g, g_ref)
    return out


def assert_grads_close(pairs, rtol=RTOL, what=""):
    for name, (g, g_ref) in pairs.items():
        assert_close(g, g_ref, rtol=rtol, atol=GRAD_ATOL_SCALE * g_ref.abs().max().item(),
                     what=f"{what} d{name}/dlogits")


@pytest.mark.parametrize("temperature", [1.0, 0.7, 2.5])
@pytest.mark.parametrize("vocab_size", [None, 33])
def test_logprobs_and_entropy_match_float64_log_softmax(temperature, vocab_size):
    logits, tokens, _ = make(vocab_size=vocab_size)
    lp_ref, h_ref = reference(logits, tokens, temperature, vocab_size)
    lp = token_logprobs(logits, tokens, temperature=temperature, vocab_size=vocab_size)
    h = token_entropy(logits, temperature=temperature, vocab_size=vocab_size)
    assert lp.dtype == h.dtype == torch.float32 and lp.shape == h.shape == (B, S)
    assert_close(lp, lp_ref, what="logprobs")
    assert_close(h, h_ref, what="entropy")


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("vocab_size", [None, 33])
def test_gradients_match_float64_autograd(temperature, vocab_size):
    logits, tokens, weights = make(seed=1, vocab_size=vocab_size)
    assert_grads_close(grads(logits, tokens, weights, temperature, vocab_size))


@pytest.mark.parametrize("chunk_size", [1, 3, S, 100, None])
def test_every_chunk_size_gives_the_reference(chunk_size):
    logits, tokens, weights = make(seed=2, vocab_size=37)
    lp_ref, h_ref = reference(logits, tokens, 0.8, 37)
    kw = dict(temperature=0.8, vocab_size=37, chunk_size=chunk_size)
    what = f"chunk {chunk_size}"
    assert_close(token_logprobs(logits, tokens, **kw), lp_ref, what=f"{what} logprobs")
    assert_close(token_entropy(logits, **kw), h_ref, what=f"{what} entropy")
    assert_grads_close(grads(logits, tokens, weights, 0.8, 37, chunk_size), what=what)


def test_padded_vocab_rows_never_count():
    """Padding logits far above the real ones would dominate any max, sum or gradient they
    entered."""
    logits, tokens, weights = make(seed=3, vocab_size=30)
    logits[..., 30:] = 50.0
    lp_ref, h_ref = reference(logits, tokens, 1.0, 30)
    assert_close(token_logprobs(logits, tokens, vocab_size=30, chunk_size=2), lp_ref)
    assert_close(token_entropy(logits, vocab_size=30, chunk_size=2), h_ref)
    pairs = grads(logits, tokens, weights, vocab_size=30, chunk_size=2)
    for name, (g, _) in pairs.items():
        assert torch.all(g[..., 30:] == 0), f"padding rows got gradient from {name}"
    assert_grads_close(pairs, what="padded")


@pytest.mark.parametrize("fn", ["logprobs", "entropy"])
def test_gradcheck_float64(fn):
    logits, tokens, _ = make(seed=4, b=2, s=5, v=9, vocab_size=7)
    x = logits.double().requires_grad_(True)
    kw = dict(temperature=0.7, chunk_size=2, vocab_size=7)
    f = (lambda z: token_logprobs(z, tokens, **kw)) if fn == "logprobs" else \
        (lambda z: token_entropy(z, **kw))
    assert f(x).dtype == torch.float64
    assert torch.autograd.gradcheck(f, (x,), eps=1e-6, atol=1e-8, rtol=1e-6)


def test_bf16_logits_give_fp32_values_and_bf16_gradients():
    logits, tokens, weights = make(seed=5, dtype=torch.bfloat16)
    lp_ref, h_ref = reference(logits, tokens, 0.9)  # the bf16 values, exactly upcast
    x = logits.clone().requires_grad_(True)
    lp = token_logprobs(x, tokens, temperature=0.9)
    h = token_entropy(x, temperature=0.9)
    assert lp.dtype == h.dtype == torch.float32
    assert_close(lp, lp_ref, what="bf16 logprobs")  # the math is fp32 on exact bf16 inputs
    assert_close(h, h_ref, what="bf16 entropy")
    pairs = grads(logits, tokens, weights, 0.9)
    assert all(g.dtype == torch.bfloat16 for g, _ in pairs.values())
    assert_grads_close(pairs, rtol=BF16_RTOL, what="bf16")


def test_non_contiguous_logits_give_the_reference():
    """A transposed [s, b, V] buffer viewed as [b, s, V] cannot be flattened: one row at a time."""
    logits, tokens, weights = make(seed=6)
    transposed = logits.transpose(0, 1).contiguous().transpose(0, 1)
    lp_ref, h_ref = reference(logits, tokens, 1.3)
    assert_close(token_logprobs(transposed, tokens, temperature=1.3, chunk_size=3), lp_ref)
    assert_close(token_entropy(transposed, temperature=1.3, chunk_size=3), h_ref)
    x = transposed.detach().clone().requires_grad_(True)
    g, = torch.autograd.grad((token_logprobs(x, tokens, chunk_size=3) * weights).sum(), x)
    xr = logits.double().requires_grad_(True)
    g_ref, = torch.autograd.grad((reference(xr, tokens)[0] * weights).sum(), xr)
    assert_close(g, g_ref, atol=GRAD_ATOL_SCALE * g_ref.abs().max().item())


def test_logits_are_left_unchanged_for_a_second_consumer():
    """Unlike megatron's cross entropy (which works in place), both ops may read the same logits
    and backpropagate."""
    logits, tokens, weights = make(seed=7)
    x = logits.clone().requires_grad_(True)
    lp = token_logprobs(x, tokens, temperature=0.5)
    h = token_entropy(x, temperature=0.5)
    ((lp + h) * weights).sum().backward()
    assert torch.equal(x.detach(), logits)
    xr = logits.double().requires_grad_(True)
    lp_ref, h_ref = reference(xr, tokens, 0.5)
    ((lp_ref + h_ref) * weights).sum().backward()
    assert_close(x.grad, xr.grad, atol=GRAD_ATOL_SCALE * xr.grad.abs().max().item())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunk_size", [1, 3, None])
def test_fused_path_equals_unfused_path(dtype, chunk_size):
    gen = torch.Generator().manual_seed(8)
    s, b, h, v, vocab = 6, 2, 16, 24, 21
    hidden = torch.randn(s, b, h, generator=gen).to(dtype)
    weight = torch.randn(v, h, generator=gen).to(dtype)
    tokens = torch.randint(0, vocab, (b, s), generator=gen)
    logits = torch.matmul(hidden, weight.t()).transpose(0, 1).contiguous()  # [b, s, V]
    fused = fused_token_logprobs(hidden, weight, tokens, temperature=0.7, chunk_size=chunk_size,
                                 vocab_size=vocab)
    unfused = token_logprobs(logits, tokens, temperature=0.7, vocab_size=vocab)
    assert fused.dtype == torch.float32 and fused.shape == (b, s)
    assert_close(fused, unfused, what="fused vs unfused")
    assert_close(fused, reference(logits, tokens, 0.7, vocab)[0], what="fused vs reference")


def test_fused_path_needs_no_grad_and_gives_none():
    gen = torch.Generator().manual_seed(9)
    hidden = torch.randn(4, 1, 8, generator=gen, requires_grad=True)
    weight = torch.randn(10, 8, generator=gen, requires_grad=True)
    out = fused_token_logprobs(hidden, weight, torch.zeros(1, 4, dtype=torch.long))
    assert not out.requires_grad


def test_bad_inputs_name_the_culprit():
    logits, tokens, _ = make()
    with pytest.raises(ValueError, match=r"tokens shape \(2, 6\) does not match"):
        token_logprobs(logits, tokens[:, :6])
    with pytest.raises(ValueError, match="tokens must hold integer"):
        token_logprobs(logits, tokens.float())
    with pytest.raises(ValueError, match=r"vocab_size 41 must be an int in \[1, tp \* logits"):
        token_entropy(logits, vocab_size=41)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        token_logprobs(logits, tokens, temperature=0.0)
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        token_entropy(logits, chunk_size=0)
    with pytest.raises(ValueError, match=r"logits must be a floating \[b, s, V/tp\]"):
        token_entropy(logits[0])
    hidden = torch.randn(S, B, 8)
    with pytest.raises(ValueError, match=r"output_weight shape \(40, 9\) is not \[V/tp, h\]"):
        fused_token_logprobs(hidden, torch.randn(V, 9), tokens)
    with pytest.raises(ValueError, match=r"tokens shape \(7, 2\) does not match \[b, s\]"):
        fused_token_logprobs(hidden, torch.randn(V, 8), tokens.t())
