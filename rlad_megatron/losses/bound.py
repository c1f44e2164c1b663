"""Losses bound to their options: what the trainer calls.

A section of the run configuration (config/algorithms.py) builds one for each step with
`build(step)`: a frozen record holding the loss's options as typed fields, called as

    value, metrics = loss(logprobs, inputs, norms)

with the student's [b, s] fp32 log-probs, the step's LossInputs and its global Normalisers
(losses/inputs.py). It calls its pure function (trrd.py, grpo.py, kdrl.py, sft.py, joint.py) with
every option by keyword, and says what it reads: `needs`, the LossInputs fields that must be set
(the trainer refuses a batch without one), and `normalisers`, the Normalisers fields the trainer
counts (the others stay None). `name` keys its metrics: loss/<name> is the value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional, Protocol, Union

from torch import Tensor

from rlad_megatron.losses.grpo import grpo_loss
from rlad_megatron.losses.inputs import NORMALISERS, LossInputs, Normalisers
from rlad_megatron.losses.joint import joint_loss
from rlad_megatron.losses.kdrl import kdrl_loss
from rlad_megatron.losses.sft import sft_loss
from rlad_megatron.losses.trrd import trrd_loss

Metrics = dict[str, Tensor]
RL_INPUTS = ("old_logprobs", "advantages", "loss_mask")
RL_NORMALISERS = ("num_seqs", "num_tokens")


class Loss(Protocol):
    """A bound loss (module docstring)."""

    name: str
    needs: tuple[str, ...]
    normalisers: tuple[str, ...]

    def __call__(self, logprobs: Tensor, inputs: LossInputs,
                 norms: Normalisers) -> tuple[Tensor, Metrics]: ...


@dataclass(frozen=True)
class TRRDLoss:
    """trrd_loss with the options of loss.trrd (TRRDLossConfig documents each)."""

    alpha: float
    eps_low: float
    eps_high: float
    teacher_logratio_clamp: float
    clamp_grad: str
    agg: str
    dual_clip: Optional[float]
    kl_beta: float
    kl_estimator: str

    name: ClassVar[str] = "trrd"
    needs: ClassVar[tuple[str, ...]] = (*RL_INPUTS, "teacher_logprobs")
    normalisers: ClassVar[tuple[str, ...]] = RL_NORMALISERS

    def __call__(self, logprobs: Tensor, inputs: LossInputs,
                 norms: Normalisers) -> tuple[Tensor, Metrics]:
        return trrd_loss(logprobs, inputs.old_logprobs, inputs.teacher_logprobs,
                         inputs.advantages, inputs.loss_mask, alpha=self.alpha,
                         eps_low=self.eps_low, eps_high=self.eps_high,
                         teacher_logratio_clamp=self.teacher_logratio_clamp, agg=self.agg,
                         clamp_grad=self.clamp_grad, dual_clip=self.dual_clip,
                         kl_beta=self.kl_beta, kl_estimator=self.kl_estimator,
                         teacher_mask=inputs.teacher_mask, ref_logprobs=inputs.ref_logprobs,
                         num_seqs=norms.num_seqs, num_tokens=norms.num_tokens)


@dataclass(frozen=True)
class GRPOLoss:
    """grpo_loss with the options of loss.grpo (GRPOLossConfig documents each)."""

    eps_low: float
    eps_high: float
    agg: str
    dual_clip: Optional[float]
    kl_beta: float
    kl_estimator: str

    name: ClassVar[str] = "grpo"
    needs: ClassVar[tuple[str, ...]] = RL_INPUTS
    normalisers: ClassVar[tuple[str, ...]] = RL_NORMALISERS
    # GRPO is TRRD at alpha = 1 (grpo.py): the ratio has no teacher term, so the clamp and its
    # gradient mode never act; JointLoss's "ratio" term reads the three as it does TRRD's
    alpha: ClassVar[float] = 1.0
    teacher_logratio_clamp: ClassVar[float] = 1.0
    clamp_grad: ClassVar[str] = "detach"

    def __call__(self, logprobs: Tensor, inputs: LossInputs,
                 norms: Normalisers) -> tuple[Tensor, Metrics]:
        return grpo_loss(logprobs, inputs.old_logprobs, inputs.advantages, inputs.loss_mask,
                         eps_low=self.eps_low, eps_high=self.eps_high, agg=self.agg,
                         dual_clip=self.dual_clip, kl_beta=self.kl_beta,
                         kl_estimator=self.kl_estimator, ref_logprobs=inputs.ref_logprobs,
                         num_seqs=norms.num_seqs, num_tokens=norms.num_tokens)


@dataclass(frozen=True)
class KDRLLoss:
    """kdrl_loss with the options of loss.kdrl at one step (beta: its anneal at that step)."""

    beta: float
    kl_estimator: str
    eps_low: float
    eps_high: float
    agg: str

    name: ClassVar[str] = "kdrl"
    needs: ClassVar[tuple[str, ...]] = (*RL_INPUTS, "teacher_logprobs")
    normalisers: ClassVar[tuple[str, ...]] = RL_NORMALISERS

    def __call__(self, logprobs: Tensor, inputs: LossInputs,
                 norms: Normalisers) -> tuple[Tensor, Metrics]:
        return kdrl_loss(logprobs, inputs.old_logprobs, inputs.teacher_logprobs,
                         inputs.advantages, inputs.loss_mask, beta=self.beta,
                         kl_estimator=self.kl_estimator, eps_low=self.eps_low,
                         eps_high=self.eps_high, agg=self.agg, teacher_mask=inputs.teacher_mask,
                         num_seqs=norms.num_seqs, num_tokens=norms.num_tokens)


@dataclass(frozen=True)
class SFTLoss:
    """sft_loss with the options of loss.sft."""

    agg: str

    name: ClassVar[str] = "sft"
    needs: ClassVar[tuple[str, ...]] = ("loss_mask",)
    normalisers: ClassVar[tuple[str, ...]] = RL_NORMALISERS

    def __call__(self, logprobs: Tensor, inputs: LossInputs,
                 norms: Normalisers) -> tuple[Tensor, Metrics]:
        return sft_loss(logprobs, inputs.loss_mask, agg=self.agg, num_seqs=norms.num_seqs,
                        num_tokens=norms.num_tokens)


@dataclass(frozen=True)
class JointLoss:
    """joint_loss: the RL loss `rl` on the student's rows plus `weight` times the distillation
    term on distill_mask, with the options of imitation.* at one step (weight: its anneal)."""

    rl: Union[TRRDLoss, GRPOLoss]
    distill: str
    weight: float
    importance_cap: float

    name: ClassVar[str] = "joint"
    normalisers: ClassVar[tuple[str, ...]] = NORMALISERS

    @property
    def needs(self) -> tuple[str, ...]:
        """The RL loss's inputs, distill_mask, and teacher_logprobs for the "ratio" term."""
        extra = ("teacher_logprobs",) if self.distill == "ratio" else ()
        return tuple(dict.fromkeys((*self.rl.needs, "distill_mask", *extra)))

    def __call__(self, logprobs: Tensor, inputs: LossInputs,
                 norms: Normalisers) -> tuple[Tensor, Metrics]:
        rl = self.rl
        return joint_loss(logprobs, inputs.old_logprobs, inputs.teacher_logprobs,
                          inputs.advantages, inputs.distill_mask,
                          rl=rl(logprobs, inputs, norms), distill=self.distill,
                          weight=self.weight, importance_cap=self.importance_cap, agg=rl.agg,
                          alpha=rl.alpha, eps_low=rl.eps_low, eps_high=rl.eps_high,
                          teacher_logratio_clamp=rl.teacher_logratio_clamp,
                          clamp_grad=rl.clamp_grad, distill_num_seqs=norms.distill_num_seqs,
                          distill_num_tokens=norms.distill_num_tokens)
