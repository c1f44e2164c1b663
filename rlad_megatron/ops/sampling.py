"""Next-token sampling from vocab-parallel logits: greedy, temperature, top-k and top-p (the
rollout's sampler, rollout/generate.py; here because it is a vocab-parallel kernel).

Sampling is Gumbel-max: token = argmax_v (z_v + g_v) over the allowed ids, z = logits / T,
g_v = -log(-log(u_v)), which draws from softmax(z) restricted to the allowed ids. The uniforms u
are a counter-based hash of (seed, step, row id, GLOBAL token id), computed on the logits' device
with int64 tensor ops (`uniforms_at`): u[row, v] is output v of a SplitMix64 stream keyed by
(seed, step, row id), i.e. fmix64(key_row + (v + 1) * golden) with the splitmix finaliser, top 53
bits as a float64 in [0, 1). Integer arithmetic wraps identically everywhere, so the uniforms are
bit-identical on CPU and GPU, and each TP rank hashes only the ids it holds (and the filtered
sampler only the gathered candidates). Tokens therefore do not depend on the TP/PP layout, the
padded vocabulary size, the batch composition or the other rows (TP=2 gives the same tokens as
TP=1). On the CPU g is computed only where the argmax can be (_best_gumbel_max: two compares per
id instead of two logs; bitwise the same result), in row blocks that stay in the L2 cache; on a
GPU the whole row is scored (no host synchronisation: the pruning needs nonzero()). Temperature 0
is greedy: argmax of the logits, lowest id on ties (like torch.argmax), no noise.

Host synchronisations per call: none, except top-p without top-k (one [1] bool: does the nucleus
reach ids some rank left out; with defer_retry the caller reads it together with its own flags),
and the CPU-only pruning above (free on the CPU).
Every collective takes tensors on the logits' device, the compute device (NCCL moves only CUDA
tensors; the decode loop keeps the logits there, rollout/pipeline.py).

Filters, applied in this order on z (like Hugging Face's warpers: temperature, top-k, top-p):
  top_k > 0   keep the k largest z (ties at the k-th value: whichever torch.topk returns)
  top_p < 1   then keep the smallest prefix of the remaining ids, sorted by probability (ties by
              lowest id), whose renormalised probability mass reaches top_p; a token is kept if
              the mass of the tokens before it is < top_p (so at least one is kept)

Log-probs returned for the sampled token (float64, [b]):
  logprobs           log softmax(logits / T)[token] over the whole vocabulary: the plain
                     temperature-scaled policy, what RL ratios need; T = 1 when greedy
  filtered_logprobs  log of the renormalised top-k/top-p distribution the token was drawn from
                     (equal to `logprobs` without filters, and when greedy)

Communication per call at TP > 1 (the vocabulary is never gathered unless top-p needs it):
  no filter      one all_gather of [b, 5] per rank: best (score, id, z) and log-sum-exp pieces
  top-k / top-p  one all_gather of each rank's K largest z and their ids, [b, 2K + 3], with
                 K = top_k, or K = top_p_candidates for top-p alone. Top-p without top-k is exact
                 when the nucleus closes above every rank's K-th value; rows where it does not
                 make the call repeat with K = V/tp (all ids), decided identically on all ranks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.distributed as dist
from torch import Tensor

from rlad_megatron.ops.vocab_shard import VocabShard, vocab_shard

TOP_P_CANDIDATES = 256
"""Ids per TP rank gathered for top-p alone before falling back to all of them."""
_MASK64 = (1 << 64) - 1


@dataclass(frozen=True)
class Sampled:
    """One step's result for b rows, identical on every rank of the TP group."""

    tokens: Tensor  # [b] int64 global token ids
    logprobs: Tensor  # [b] float64, under softmax(logits / T)
    filtered_logprobs: Tensor  # [b] float64, under the top-k/top-p renormalised distribution
    retry: Optional[Tensor] = None  # [] bool (sample_next(defer_retry=True), top-p alone): True
    # when the nucleus may reach ids some rank left out; then call again with all ids


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _signed(x: int) -> int:
    """A uint64 as the int64 with the same bits."""
    return x - (1 << 64) if x >= 1 << 63 else x


_GOLDEN, _MIX1, _MIX2 = (_signed(c) for c in (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9,
                                              0x94D049BB133111EB))


def _xor_shift_(x: Tensor, k: int, tmp: Tensor) -> Tensor:
    """x ^= x >>> k (logical shift of the int64 bits), in place; tmp: scratch like x."""
    torch.bitwise_right_shift(x, k, out=tmp)
    tmp.bitwise_and_((1 << (64 - k)) - 1)  # >> is arithmetic on int64: drop the sign copies
    return x.bitwise_xor_(tmp)


def _fmix_(x: Tensor) -> Tensor:
    """The splitmix64 finaliser on int64 tensors, in place (wrapping products: the uint64 bits)."""
    tmp = torch.empty_like(x)
    _xor_shift_(x, 30, tmp).mul_(_MIX1)
    _xor_shift_(x, 27, tmp).mul_(_MIX2)
    return _xor_shift_(x, 31, tmp)


def stream_seed(seed: int, step: int, row: int) -> int:
    """The 64-bit key of one (seed, step, row) stream, as a Python int (row_keys' value)."""
    x = 0
    for value in (seed, step, row):
        x = _splitmix64(x ^ (value & _MASK64))
    return x


def row_keys(row_ids: Tensor, step: int | Tensor, seed: int) -> Tensor:
    """[b] int64 keys (stream_seed's bits) of the rows' streams, on row_ids' device. step: one
    for every row, or [b] int64 (rows at different positions: continuous batching); the same
    bits either way."""
    first = _splitmix64(seed & _MASK64)
    if isinstance(step, Tensor):  # splitmix64(first ^ step) in int64 tensor ops
        base = _fmix_(step.to(torch.int64).bitwise_xor(_signed(first)).add_(_GOLDEN))
        x = row_ids.to(torch.int64).bitwise_xor(base).add_(_GOLDEN)
    else:
        base = _splitmix64(first ^ (step & _MASK64))
        x = row_ids.to(torch.int64).bitwise_xor(_signed(base)).add_(_GOLDEN)
    return _fmix_(x)


def uniforms_at(row_ids: Tensor, step: int | Tensor, seed: int, ids: Tensor) -> Tensor:
    """[b, n] float64 uniforms in [0, 1) at global token ids `ids` ([n], the same for every row,
    or [b, n]), on row_ids' device: u[i, j] depends only on (seed, step, row_ids[i], id), and is
    bit-identical on every device (module docstring)."""
    keys = row_keys(row_ids, step, seed)[:, None]
    x = (ids.to(torch.int64) + 1).mul_(_GOLDEN)
    x = (x[None] if x.dim() == 1 else x) + keys
    _fmix_(x).bitwise_right_shift_(11).bitwise_and_((1 << 53) - 1)  # the top 53 bits
    return x.to(torch.float64).mul_(2.0 ** -53)


def uniforms(row_ids: Tensor, step: int, seed: int, vocab_size: int) -> Tensor:
    """[b, vocab_size] uniforms_at every id of the true vocabulary, on row_ids' device."""
    return uniforms_at(row_ids, step, seed, torch.arange(vocab_size, device=row_ids.device))


def gumbel(u: Tensor) -> Tensor:
    """Gumbel(0, 1) noise -log(-log u) of float64 uniforms, elementwise (a new tensor). The same
    value for an element wherever it sits in `u` (checked by the unit tests), so the noise of a
    few gathered ids equals that of the whole vocabulary at those ids."""
    return u.log().neg_().log_().neg_()


def gumbel_noise(row_ids: Tensor, step: int, seed: int, vocab_size: int) -> Tensor:
    """[b, vocab_size] float64 Gumbel(0, 1) noise on row_ids' device; row i depends only on
    (seed, step, row_ids[i]). The sampler computes it only at the ids that can win."""
    return gumbel(uniforms(row_ids, step, seed, vocab_size))


def _gather(local: Tensor, shard: VocabShard) -> Tensor:
    """[b, n] on each rank -> [tp, b, n] on every rank (one all_gather). `local` is on the
    logits' device, the compute device: the one NCCL moves (runtime/devices.py; ops/ does not
    import runtime/, style.md 5.1)."""
    if shard.group is None:
        return local[None]
    parts = [torch.empty_like(local) for _ in range(shard.tp)]
    dist.all_gather(parts, local.contiguous(), group=shard.group)
    return torch.stack(parts)


def _lse_pieces(z: Tensor) -> tuple[Tensor, Tensor]:
    """Local max m [b] and sum exp(z - m) [b] over this rank's real ids (-inf, 0 when none)."""
    m, s, _ = _lse_pieces_at(z)
    return m, s


def _lse_pieces_at(z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """_lse_pieces and where the max is (an id of this rank; 0 when none)."""
    b = z.shape[0]
    if z.shape[1] == 0:
        return (z.new_full((b,), float("-inf")), z.new_zeros(b),
                torch.zeros(b, dtype=torch.long, device=z.device))
    m, at = z.max(-1)
    return m, torch.sub(z, m[:, None]).exp_().sum(-1), at


def _global_lse(m: Tensor, s: Tensor) -> Tensor:
    """[tp, b] pieces -> log sum_v exp(z_v) over the whole vocabulary, [b]."""
    big_m = m.max(0).values
    return big_m + (s * (m - big_m).exp()).sum(0).log()


_MARGIN = 1e-6
"""Slack of the pruning bounds in _best_gumbel_max (scores are O(10) and exact to ~1e-14)."""


def _best_gumbel_max(z: Tensor, u: Tensor, z_max: Tensor, z_at: Tensor) -> tuple[Tensor, Tensor]:
    """max_v (z_v + gumbel(u_v)) per row and the lowest v reaching it: the same values as the
    max over the whole row, with the noise computed only where the maximum can be.

    z, u: [b, n] float64 (n >= 1); z_max, z_at = z.max(-1). g(u) = -log(-log u) is
    increasing, so with L a score reached by some id (the best of argmax z and argmax u) every v
    with a score >= L has z_v >= L - g(max u) and g(u_v) >= L - max z, i.e.
    u_v >= exp(-exp(-(L - max z))). Both cuts are taken with _MARGIN of slack (the u cut also
    1e-15 lower, more than its rounding error where u is close to 1); the scores of the ids left
    are computed as over the whole row (gumbel() is elementwise). Rows where the cuts leave many
    ids (flat logits at a low temperature, say) are not worth the gathers: then the whole row
    is scored. Typical cost: two compares over the row instead of two logs."""
    b, n = z.shape
    if z.device.type != "cpu":  # no nonzero() off the CPU: it would synchronise with the host
        return (z + gumbel(u)).max(-1)
    u_max, u_arg = u.max(-1)
    probe = torch.stack([z_at, u_arg], 1)  # [b, 2]
    lower = (z.gather(1, probe) + gumbel(u.gather(1, probe))).max(-1).values
    z_cut = lower - gumbel(u_max) - _MARGIN
    u_cut = (-(-(lower - z_max - _MARGIN)).exp()).exp() - 1e-15  # a few ulps below, near 1
    cand = (u >= u_cut[:, None]) & (z >= z_cut[:, None])
    rows, cols = cand.nonzero(as_tuple=True)  # row-major: ids ascending within a row
    count = torch.bincount(rows, minlength=b)
    if rows.numel() > b * n // 8 or bool((count == 0).any()):
        return (z + gumbel(u)).max(-1)  # first maximum: lowest id
    score = z[rows, cols] + gumbel(u[rows, cols])
    best = torch.full((b,), float("-inf"), dtype=z.dtype).scatter_reduce(
        0, rows, score, "amax")
    first = torch.where(score == best[rows], cols, n)
    loc = torch.full((b,), n, dtype=torch.long).scatter_reduce(0, rows, first, "amin")
    return best, loc


def _local_pick(z: Tensor, u: Optional[Tensor], shard: VocabShard) -> Tensor:
    """This rank's best id per row, [b, 5]: score, global id, its z, and the log-sum-exp pieces
    m, s. z: [b, n_valid] float64; u: the same ids' uniforms, or None for greedy."""
    b = z.shape[0]
    m, s, at = _lse_pieces_at(z)
    if z.shape[1] == 0:
        inf = z.new_full((b,), float("-inf"))
        return torch.stack([inf, z.new_zeros(b), inf, m, s], -1)
    if u is None:
        best, loc = z.max(-1)  # first maximum: lowest id within the shard
    else:
        best, loc = _best_gumbel_max(z, u, m, at)
    return torch.stack([best, (loc + shard.start).double(), z.gather(1, loc[:, None])[:, 0],
                        m, s], -1)


def _sample_unfiltered(mine: Tensor, shard: VocabShard) -> Sampled:
    """Every rank's _local_pick -> the token with the best score, and its log-prob."""
    b = mine.shape[0]
    every = _gather(mine, shard)  # [tp, b, 5]
    winner = every[..., 0].argmax(0)  # first rank wins ties: lowest id, like torch.argmax
    pick = every.gather(0, winner[None, :, None].expand(1, b, 5))[0]
    lp = pick[:, 2] - _global_lse(every[..., 3], every[..., 4])
    return Sampled(tokens=pick[:, 1].long(), logprobs=lp, filtered_logprobs=lp)


def _candidates(z: Tensor, shard: VocabShard, k: int) -> Tensor:
    """This rank's k largest z, [b, 2k + 3]: values (-inf padded), global ids (-1 padded), m, s,
    and tau, the k-th value when ids were left out (-inf when all real ids are in)."""
    b, n = z.shape
    take = min(k, n)
    vals, idx = z.topk(take, dim=-1) if take else (z[:, :0], z[:, :0].long())
    pad = k - take
    vals = torch.cat([vals, z.new_full((b, pad), float("-inf"))], 1)
    ids = torch.cat([(idx + shard.start).double(), z.new_full((b, pad), -1.0)], 1)
    m, s = _lse_pieces(z)
    tau = vals[:, k - 1] if n > k else z.new_full((b,), float("-inf"))
    return torch.cat([vals, ids, m[:, None], s[:, None], tau[:, None]], 1)


def _sample_filtered(z: Tensor, noise: Callable[[Tensor], Tensor], shard: VocabShard, *,
                     top_k: int, top_p: float, k: int,
                     defer: bool = False) -> Optional[Sampled]:
    """Top-k/top-p Gumbel-max over the gathered candidates; None when top-p needs more of them
    (defer: no host read, the Sampled's `retry` flag says so instead).
    noise(ids [b, m]) -> the uniforms at those global ids; computed at the candidates only."""
    retry = None
    b = z.shape[0]
    every = _gather(_candidates(z, shard, k), shard)  # [tp, b, 2k + 3]
    vals = every[..., :k].permute(1, 0, 2).reshape(b, -1)
    ids = every[..., k:2 * k].permute(1, 0, 2).reshape(b, -1)
    lse = _global_lse(every[..., 2 * k], every[..., 2 * k + 1])
    tau = every[..., 2 * k + 2].max(0).values
    by_id = ids.argsort(dim=-1, stable=True)  # then a stable sort by value: ties -> lowest id first
    vals, ids = vals.gather(1, by_id), ids.gather(1, by_id)
    order = vals.argsort(dim=-1, descending=True, stable=True)
    vals, ids = vals.gather(1, order), ids.gather(1, order)
    keep = torch.isfinite(vals)
    if top_k > 0:
        keep &= torch.arange(vals.shape[1], device=vals.device) < top_k
    if top_p < 1.0:
        norm = torch.where(keep, vals, float("-inf")).logsumexp(-1) if top_k > 0 else lse
        p = torch.where(keep, (vals - norm[:, None]).exp(), 0.0)
        keep &= (p.cumsum(-1) - p) < top_p
        last = vals.gather(1, (keep.sum(-1, keepdim=True) - 1).clamp(min=0))[:, 0]
        if top_k == 0 and k < shard.local_size:  # the nucleus may reach ids a rank left out
            retry = (last <= tau).any()
            if not defer and bool(retry):
                return None
    safe_ids = ids.long().clamp(min=0)
    score = torch.where(keep, vals + gumbel(noise(safe_ids)), float("-inf"))
    j = score.argmax(-1, keepdim=True)
    z_tok = vals.gather(1, j)[:, 0]
    kept_lse = torch.where(keep, vals, float("-inf")).logsumexp(-1)
    return Sampled(tokens=safe_ids.gather(1, j)[:, 0], logprobs=z_tok - lse,
                   filtered_logprobs=z_tok - kept_lse, retry=retry if defer else None)


_BLOCK = 1 << 16
"""float64 values per row block of the unfiltered sampler (512 KiB)."""


def _scaled(logits: Tensor, temperature: float) -> Tensor:
    """z = logits / T in float64 (x / 1 is x, bitwise: no division at T = 1)."""
    x = logits.double()
    return x if temperature == 1.0 else x / temperature


def sample_next(logits: Tensor, *, temperature: float, seed: int, step: int | Tensor,
                row_ids: Tensor,
                vocab_size: int, top_k: int = 0, top_p: float = 1.0,
                tp_group: Optional[dist.ProcessGroup] = None,
                top_p_candidates: int = TOP_P_CANDIDATES, defer_retry: bool = False) -> Sampled:
    """Sample one token per row from vocab-parallel logits (see the module docstring).

    logits: [b, V/tp] this TP rank's block of the padded vocabulary (ids >= vocab_size are
        padding and never sampled); the full [b, V] when tp_group is None.
    temperature: 0 means greedy (argmax; filters ignored).
    row_ids: [b] int64, the rows' identities for the noise (global row index under DP), on the
        logits' device.
    step: the position of the token drawn (0 for a row's first new token): one for every row, or
        [b] int64 on the logits' device.
    defer_retry: top-p without top-k decides on the host whether its candidates held the nucleus;
        with defer_retry that read is left to the caller (Sampled.retry, a device flag it can
        read with its own, e.g. the stop check: one host read per decode step); when it is True
        the caller must call again with top_p_candidates >= V/tp, whose result is exact.
    Call on every rank of tp_group with the same arguments; returns the same Sampled on each."""
    shard = vocab_shard(logits.shape[-1], tp_group, vocab_size)
    if temperature == 0:
        return _sample_unfiltered(_local_pick(logits[:, :shard.n_valid].double(), None, shard),
                                  shard)
    if top_k <= 0 and top_p >= 1.0:
        # row blocks of <= _BLOCK float64 values: z, u and exp(z - m) stay in the CPU's L2 cache
        # (every operation here is row by row, so the blocks change no value)
        # (on a device: one block, the whole batch)
        rows = (max(1, _BLOCK // max(shard.n_valid, 1)) if logits.device.type == "cpu"
                else logits.shape[0])
        mine = []
        ids = torch.arange(shard.start, shard.start + shard.n_valid, device=logits.device)
        for lo in range(0, logits.shape[0], rows):
            z = _scaled(logits[lo:lo + rows, :shard.n_valid], temperature)
            at = step[lo:lo + rows] if isinstance(step, Tensor) else step
            mine.append(_local_pick(z, uniforms_at(row_ids[lo:lo + rows], at, seed, ids), shard))
        return _sample_unfiltered(torch.cat(mine), shard)
    z = _scaled(logits[:, :shard.n_valid], temperature)

    def noise(ids: Tensor) -> Tensor:
        return uniforms_at(row_ids, step, seed, ids)

    k = min(top_k if top_k > 0 else top_p_candidates, shard.local_size)
    out = _sample_filtered(z, noise, shard, top_k=top_k, top_p=top_p, k=k,
                           defer=defer_retry and k < shard.local_size)
    if out is None:
        out = _sample_filtered(z, noise, shard, top_k=top_k, top_p=top_p, k=shard.local_size)
    return out
