"""Pure per-token losses (TRRD and baselines): tensors in, (loss, metrics) out.

Every pure loss takes [b, s] fp32 log-probs, its tensor inputs, keyword-only hyperparameters with
no defaults (the run config's sections hold them, config/algorithms.py), and follows the
aggregation contract of losses/aggregate.py and the metrics contract of losses/metrics.py. The
trainer calls them bound to their options (losses/bound.py: TRRDLoss, GRPOLoss, KDRLLoss, SFTLoss,
JointLoss), with a LossInputs record and the global Normalisers (losses/inputs.py).
"""

from rlad_megatron.losses.aggregate import AGGREGATIONS, aggregate, global_normalizers
from rlad_megatron.losses.bound import GRPOLoss, JointLoss, KDRLLoss, Loss, SFTLoss, TRRDLoss
from rlad_megatron.losses.diagnostics import check_teacher_logprobs
from rlad_megatron.losses.grpo import grpo_loss
from rlad_megatron.losses.inputs import NORMALISERS, LossInputs, Normalisers
from rlad_megatron.losses.joint import distill_share, joint_loss
from rlad_megatron.losses.kdrl import kdrl_beta, kdrl_loss
from rlad_megatron.losses.kl import KL_ESTIMATORS, kl_estimate
from rlad_megatron.losses.metrics import METRICS, REDUCE_OPS, finalize, merge, reduce_op
from rlad_megatron.losses.sft import sft_loss
from rlad_megatron.losses.trrd import trrd_log_ratio, trrd_loss

__all__ = ["Loss", "TRRDLoss", "GRPOLoss", "KDRLLoss", "SFTLoss", "JointLoss", "LossInputs",
           "Normalisers", "NORMALISERS", "trrd_loss", "grpo_loss", "kdrl_loss", "kdrl_beta",
           "sft_loss", "joint_loss", "distill_share", "trrd_log_ratio", "aggregate",
           "AGGREGATIONS", "global_normalizers", "kl_estimate", "KL_ESTIMATORS",
           "check_teacher_logprobs", "METRICS", "REDUCE_OPS", "reduce_op", "merge", "finalize"]
