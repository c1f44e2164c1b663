"""Vocab-parallel kernels: the only code that knows the vocabulary is sharded over TP.

Each takes this rank's block of the vocabulary ([b, s, V/tp] logits, or the [V/tp, h] output
weight) and the TP group, and returns [b, s] fp32 values that are identical on every rank; only
[b, s] tensors are all-reduced, the vocabulary is never gathered.

    token_logprobs        log softmax(logits / T)[tokens], differentiable (fp32 per chunk)
    token_entropy         entropy of softmax(logits / T), differentiable
    fused_token_logprobs  teacher path: hidden states -> token log-probs, forward only,
                          never holding the full logits
    sample_next           the rollout's next token from [b, V/tp] logits: Gumbel-max with
                          layout-invariant noise, top-k / top-p (gathers only candidates)
"""

from rlad_megatron.ops.entropy import token_entropy
from rlad_megatron.ops.fused import fused_token_logprobs
from rlad_megatron.ops.logprobs import token_logprobs
from rlad_megatron.ops.sampling import TOP_P_CANDIDATES, Sampled, gumbel_noise, sample_next

__all__ = ["token_logprobs", "token_entropy", "fused_token_logprobs", "sample_next", "Sampled",
           "gumbel_noise", "TOP_P_CANDIDATES"]
