"""KV-cached generation on megatron models under TP and PP: prompts -> RolloutBatch.

    generate           batched sampling (greedy, temperature, top-k, top-p, EOS, G samples per
                       prompt) with megatron's StaticInferenceContext as the KV cache
    generate_detailed  the same, also returning filtered log-probs and the steps run
    GenerationConfig   the sampling settings
    sample_next        one token per row from vocab-parallel logits, TP-invariant for a seed

Modules: generate.py (the loop and the contract), pipeline.py (one step's forward through this
rank's PP stage), layout.py (padding in and out); the sampler (Gumbel-max on vocab shards) is
ops/sampling.py.
"""

from rlad_megatron.rollout.generate import Generation, GenerationConfig, generate, generate_detailed
from rlad_megatron.ops.sampling import Sampled, gumbel_noise, sample_next

__all__ = ["generate", "generate_detailed", "Generation", "GenerationConfig", "sample_next",
           "Sampled", "gumbel_noise"]
