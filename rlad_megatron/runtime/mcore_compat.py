"""Every difference between megatron-core releases that rlad_megatron meets (0.16.1 .. 0.19).

CI pins 0.16.1 (the newest on Python 3.11); NGC containers ship 0.17-0.19 on Python 3.12. Calls
whose signature moved go through here, filtered by the callee's signature, so that call sites
stay version-free.
"""

from __future__ import annotations

import inspect
from functools import lru_cache

from packaging.version import Version


@lru_cache(maxsize=None)
def mcore_version() -> Version:
    from importlib.metadata import version

    return Version(version("megatron-core"))


def _accepted(fn, kwargs: dict) -> dict:
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return kwargs
    return {k: v for k, v in kwargs.items() if k in params}


def local_layer_spec(*, qk_layernorm: bool, normalization: str = "RMSNorm"):
    """megatron's local (no transformer-engine) GPT layer spec."""
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    return get_gpt_layer_local_spec(**_accepted(get_gpt_layer_local_spec, dict(
        qk_layernorm=qk_layernorm, normalization=normalization)))


def te_layer_spec(*, qk_layernorm: bool):
    """megatron's transformer-engine GPT layer spec (GPU)."""
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_with_transformer_engine_spec

    return get_gpt_layer_with_transformer_engine_spec(
        **_accepted(get_gpt_layer_with_transformer_engine_spec, dict(qk_layernorm=qk_layernorm)))


def have_transformer_engine() -> bool:
    try:
        import transformer_engine.pytorch  # noqa: F401
    except Exception:
        return False
    return True


def gpt_model_kwargs(**kwargs) -> dict:
    """Keep only the GPTModel constructor arguments this release knows (pg_collection, vp_stage)."""
    from megatron.core.models.gpt import GPTModel

    return _accepted(GPTModel.__init__, kwargs)


class hidden_states_only:
    """Context manager: a last-stage GPTModel chunk returns its final (normed) hidden states
    [s, b, h] instead of logits, so the teacher's fused log-prob path can apply the output layer
    chunk by chunk. Relies on GPTModel._postprocess returning hidden states when
    `self.post_process` is False (0.16 .. 0.19); the decoder's final norm is built at construction
    and still applies."""

    def __init__(self, model):
        self.model = model
        self.saved = None

    def __enter__(self):
        self.saved = self.model.post_process
        self.model.post_process = False
        return self.model

    def __exit__(self, *exc):
        self.model.post_process = self.saved
        return False


def output_weight(model):
    """This rank's [V/tp, h] output-layer weight (the embedding when tied)."""
    if model.share_embeddings_and_output_weights:
        return model.shared_embedding_or_output_weight()
    return model.output_layer.weight


def gather_sequence_parallel(hidden, model):
    """Hidden states [s/tp, b, h] -> [s, b, h] when the model runs sequence parallel."""
    if not model.config.sequence_parallel:
        return hidden
    from megatron.core.tensor_parallel.mappings import gather_from_sequence_parallel_region

    return gather_from_sequence_parallel_region(hidden, tensor_parallel_output_grad=False)
