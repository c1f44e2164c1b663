"""The algorithm's sections of the run configuration (train/config.py RunConfig): advantages,
the losses (TRRD, GRPO, KDRL, SFT), where the teacher anchors the ratio (selection) and the
imitation of teacher trajectories; and `choice`, how a field declares the registry its values
come from. Split from train/config.py to keep each file readable; the schema is one
(train/schema.py walks both).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Optional

from rlad_megatron.data.advantages import ADVANTAGES, TEACHER_ADVANTAGES
from rlad_megatron.data.selection import ALIGN_METRICS, SELECTION_POLICIES
from rlad_megatron.losses import AGGREGATIONS, KL_ESTIMATORS
from rlad_megatron.losses.joint import DISTILL_LOSSES
from rlad_megatron.losses.trrd import CLAMP_GRAD


def choice(default: str, allowed: Iterable[str]):
    """A string field whose allowed values are `allowed` (a registry's keys): checked by
    train/schema.py before any model is built, listed by `rlad train --help-config`."""
    return field(default=default, metadata={"choices": tuple(allowed)})


@dataclass
class AdvantageConfig:
    """Group-normalised advantages (data/advantages.py)."""

    estimator: str = choice("grpo", ADVANTAGES)
    """grpo: (r - mean) / (std + eps) within the group; dr_grpo: r - mean (no std scaling)."""
    eps: float = 1e-6
    """Added to the group's reward std."""
    drop_zero_variance: bool = False
    """Drop groups whose rewards are all equal (they carry no policy gradient)."""


@dataclass
class TRRDLossConfig:
    """Trust Region Ratio Distillation (losses/trrd.py): ratio pi_S / (pi_old^alpha * pi_T^(1 -
    alpha)) inside the clipped surrogate."""

    alpha: float = 0.5
    """Weight of the old policy in the ratio's anchor; 1 - alpha is the teacher's (1: GRPO)."""
    eps_low: float = 0.2
    """Lower clip: the ratio is clipped at 1 - eps_low."""
    eps_high: float = 0.28
    """Upper clip: the ratio is clipped at 1 + eps_high (DAPO's clip-higher)."""
    teacher_logratio_clamp: float = 1.0
    """|log pi_T - log pi_old| is clamped at this many nats per token in the anchor."""
    clamp_grad: str = choice("detach", CLAMP_GRAD)
    """How the clamp passes gradients (detach: none through clamped tokens; straight_through)."""
    agg: str = choice("seq_mean_token_mean", AGGREGATIONS)
    """How token losses become the batch loss (losses/aggregate.py)."""
    dual_clip: Optional[float] = None
    """Dual-clip constant c > 1 for negative advantages (None: off)."""
    kl_beta: float = 0.0
    """beta of the paper's Eq. 4: beta * KL(pi_S || pi_ref), pi_ref the student's weights at the
    start of the run (kept in host memory, swapped in for a forward-only pass; models/reference.py).
    0: no reference pass."""
    kl_estimator: str = choice("k3", KL_ESTIMATORS)
    """Estimator of the reference KL (losses/kl.py)."""


@dataclass
class GRPOLossConfig:
    """GRPO's clipped surrogate with ratio pi_S / pi_old (losses/grpo.py)."""

    eps_low: float = 0.2
    """Lower clip: 1 - eps_low."""
    eps_high: float = 0.28
    """Upper clip: 1 + eps_high."""
    agg: str = choice("seq_mean_token_mean", AGGREGATIONS)
    """How token losses become the batch loss (losses/aggregate.py)."""
    dual_clip: Optional[float] = None
    """Dual-clip constant c > 1 for negative advantages (None: off)."""
    kl_beta: float = 0.0
    """beta * KL(pi_S || pi_ref), as loss.trrd.kl_beta."""
    kl_estimator: str = choice("k3", KL_ESTIMATORS)
    """Estimator of the reference KL (losses/kl.py)."""


@dataclass
class KDRLLossConfig:
    """KDRL (losses/kdrl.py): GRPO's surrogate plus beta * KL(pi_S || pi_T) on the rollouts."""

    beta_init: float = 5e-3
    """Weight of the teacher KL at the start."""
    beta_min: float = 1e-3
    """Weight of the teacher KL at the end of the anneal."""
    anneal_steps: int = 0
    """Linear anneal of beta from beta_init to beta_min over this many steps (0: constant)."""
    kl_estimator: str = choice("k2", KL_ESTIMATORS)
    """Estimator of the teacher KL (losses/kl.py)."""
    eps_low: float = 0.2
    """Lower clip of the surrogate: 1 - eps_low."""
    eps_high: float = 0.28
    """Upper clip of the surrogate: 1 + eps_high."""
    agg: str = choice("seq_mean_token_mean", AGGREGATIONS)
    """How token losses become the batch loss (losses/aggregate.py)."""

    def loss_kwargs(self, step: int) -> dict:
        """The kdrl loss's keyword arguments at `step` (beta annealed)."""
        from rlad_megatron.losses import kdrl_beta

        beta = self.beta_init if self.anneal_steps == 0 else kdrl_beta(
            step, self.beta_init, self.beta_min, self.anneal_steps)
        return {"beta": beta, "kl_estimator": self.kl_estimator, "eps_low": self.eps_low,
                "eps_high": self.eps_high, "agg": self.agg}


@dataclass
class SFTLossConfig:
    """Token negative log-likelihood (losses/sft.py)."""

    agg: str = choice("token_mean", AGGREGATIONS)
    """How token losses become the batch loss (losses/aggregate.py)."""


@dataclass
class LossConfig:
    """Per-loss options; the algorithm picks which section is used."""

    trrd: TRRDLossConfig = field(default_factory=TRRDLossConfig)
    """algorithm rlad."""
    grpo: GRPOLossConfig = field(default_factory=GRPOLossConfig)
    """algorithm grpo."""
    kdrl: KDRLLossConfig = field(default_factory=KDRLLossConfig)
    """algorithm kdrl."""
    sft: SFTLossConfig = field(default_factory=SFTLossConfig)
    """algorithms sft and sft_distill."""


@dataclass
class SelectionConfig:
    """Where the teacher anchors the ratio (data/selection.py), token by token."""

    policy: str = choice("paper", SELECTION_POLICIES)
    """paper: every loss token; advantage / alignment / both: the tokens passing those tests."""
    tau_adv: float = 0.0
    """advantage policy: tokens of rows with advantage >= tau_adv."""
    tau_align: float = 0.0
    """alignment policy: tokens where lp_T - lp_old >= tau_align."""


@dataclass
class ImitationConfig:
    """Selective imitation of teacher trajectories (rollout.teacher_samples > 0; data/selection.py
    `gate_trajectories`, losses/joint.py). Each teacher trajectory is imitated only when every
    switched-on gate passes:

      aligned        the student can follow it: align_metric within tau_align
      raises reward  its advantage A_T >= tau_adv
      explore        the prompt is not left to free RL exploration: the student group's success
                     rate (rewards >= success_reward) < tau_success

    total = RL loss on the student's rows + weight * distillation loss on the selected rows.
    """

    advantage: str = choice("group", TEACHER_ADVANTAGES)
    """How teacher rows get an advantage: "group" (the group's mean and std include them) or
    "baseline" (against the student group's mean and std, which exclude them). Two validation
    sweeps (docs/reproduction.md) did not separate them (group 34.2 / 35.1 vs baseline 33.2 /
    34.9 mean@4); "group" is GRPO's own convention."""
    gate_aligned: bool = True
    """Switch the aligned gate on."""
    align_metric: str = choice("gap", ALIGN_METRICS)
    """"gap": mean over the trajectory's tokens of lp_T - lp_S, passes when <= tau_align;
    "loglik": the student's mean per-token log-likelihood lp_S, passes when >= tau_align."""
    tau_align: float = 1.0
    """nats per token ("gap") or per-token log-likelihood ("loglik")."""
    gate_advantage: bool = True
    """Switch the raises-reward gate on."""
    tau_adv: float = 0.1
    """A teacher trajectory raises reward when its advantage is at least this."""
    gate_explore: bool = True
    """Switch the explore gate on."""
    tau_success: float = 0.5
    """Prompts the student solves at this rate or more are left to RL (no imitation)."""
    success_reward: float = 1.0
    """A sample succeeds when its reward is at least this."""
    distill_loss: str = choice("nll", DISTILL_LOSSES)
    """"ratio": the RL loss's clipped ratio (TRRD's, or GRPO's under algorithm=grpo) on the
    teacher's tokens, importance-weighted from the teacher to the ratio's anchor and truncated at
    importance_cap; "nll": token negative log-likelihood (behaviour cloning). Two validation
    sweeps (docs/reproduction.md) did not separate them (nll 35.1 / 34.7 vs ratio 34.2 / 35.1
    mean@4); "nll" needs no off-policy correction, so it is the simpler of two equals."""
    importance_cap: float = 1.0
    """Truncation of the "ratio" term's importance weight (pi_old / pi_T)^alpha (math.inf: none)."""
    weight: float = 1.0
    """lambda: the distillation term's weight."""
    weight_end: Optional[float] = None
    """Anneal lambda linearly from `weight` to this over weight_steps steps (None: constant)."""
    weight_steps: int = 0
    """Steps of the lambda anneal (weight_end)."""
