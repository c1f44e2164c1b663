"""Pure per-token losses (TRRD and baselines): tensors in, (loss, metrics) out.

LOSSES maps a name to its function; every loss takes [b, s] fp32 log-probs, its inputs from a
LossInputs record (losses/inputs.py: checked here, at import, that every tensor parameter is a
LossInputs field), keyword-only scalar hyperparameters, and follows the aggregation contract of
losses/aggregate.py and the metrics contract of losses/metrics.py.
"""

from typing import Callable

from rlad_megatron.losses.aggregate import AGGREGATIONS, aggregate, global_normalizers
from rlad_megatron.losses.diagnostics import check_teacher_logprobs
from rlad_megatron.losses.grpo import grpo_loss
from rlad_megatron.losses.inputs import NORMALISERS, LossInputs, check_loss_signature
from rlad_megatron.losses.joint import distill_share, joint_loss
from rlad_megatron.losses.kdrl import kdrl_beta, kdrl_loss
from rlad_megatron.losses.kl import KL_ESTIMATORS, kl_estimate
from rlad_megatron.losses.metrics import METRICS, REDUCE_OPS, finalize, merge, reduce_op
from rlad_megatron.losses.sft import sft_loss
from rlad_megatron.losses.trrd import trrd_log_ratio, trrd_loss

LOSSES: dict[str, Callable] = {
    "trrd": trrd_loss,
    "grpo": grpo_loss,
    "kdrl": kdrl_loss,
    "sft": sft_loss,
    "joint": joint_loss,
}
for _fn in LOSSES.values():
    check_loss_signature(_fn)


def get_loss(name: str) -> Callable:
    """The loss function registered under `name`; ValueError listing the known names."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; known: {sorted(LOSSES)}")
    return LOSSES[name]


__all__ = ["LOSSES", "get_loss", "LossInputs", "NORMALISERS", "trrd_loss", "grpo_loss",
           "kdrl_loss", "kdrl_beta", "sft_loss", "joint_loss", "distill_share",
           "trrd_log_ratio", "aggregate", "AGGREGATIONS", "global_normalizers", "kl_estimate",
           "KL_ESTIMATORS", "check_teacher_logprobs", "METRICS", "REDUCE_OPS", "reduce_op",
           "merge", "finalize"]
