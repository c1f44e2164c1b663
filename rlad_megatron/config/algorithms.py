"""The algorithm's sections of the run configuration (config/run.py RunConfig): advantages,
the losses (TRRD, GRPO, KDRL, SFT), where the teacher anchors the ratio (selection) and the
imitation of teacher trajectories; and `choice`, how a field declares the registry its values
come from. Split from config/run.py to keep each file readable; the schema is one
(config/schema.py walks both).

The loss sections (and imitation) are where the losses' defaults and ranges live: each
`build(step)` returns its bound loss (losses/bound.py) with every option passed by name, and
`validate()` checks the section's own ranges (config/validate.py calls it; the named choices are
config/schema.py's).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Optional, Union

from rlad_megatron.data.advantages import ADVANTAGES, TEACHER_ADVANTAGES
from rlad_megatron.data.selection import ALIGN_METRICS, SELECTION_POLICIES
from rlad_megatron.losses import (AGGREGATIONS, KL_ESTIMATORS, GRPOLoss, JointLoss, KDRLLoss,
                                  SFTLoss, TRRDLoss, kdrl_beta)
from rlad_megatron.losses.joint import DISTILL_LOSSES
from rlad_megatron.losses.trrd import CLAMP_GRAD


def _check_clip(section: str, eps_low: float, eps_high: float, dual_clip: Optional[float]) -> None:
    """The clipped surrogate's ranges, named under `section` (e.g. "loss.grpo")."""
    if not 0 <= eps_low < 1:
        raise ValueError(f"{section}.eps_low: {eps_low} must be in [0, 1) (the ratio's lower "
                         f"bound 1 - eps_low must stay positive)")
    if eps_high < 0:
        raise ValueError(f"{section}.eps_high: {eps_high} must be >= 0")
    if dual_clip is not None and dual_clip <= 1:
        raise ValueError(f"{section}.dual_clip: {dual_clip} must be > 1 (or null)")


def _check_kl_beta(section: str, kl_beta: float) -> None:
    if kl_beta < 0:
        raise ValueError(f"{section}.kl_beta: {kl_beta} must be >= 0")


def choice(default: str, allowed: Iterable[str]):
    """A string field whose allowed values are `allowed` (a registry's keys): checked by
    config/schema.py before any model is built, listed by `rlad train --help-config`."""
    return field(default=default, metadata={"choices": tuple(allowed)})


@dataclass
class AdvantageConfig:
    """Group-normalised advantages (data/advantages.py)."""

    estimator: str = choice("grpo", ADVANTAGES)
    """grpo: (r - mean) / (std + eps) within the group (population std); dr_grpo: r - mean (no
    std scaling). A group whose rewards are all equal gets advantage 0."""
    eps: float = 1e-6
    """Added to the group's reward std by grpo (and by the "baseline" teacher-row advantage);
    dr_grpo does not use it."""
    drop_zero_variance: bool = False
    """Leave groups whose rewards are all equal out of the RL loss: their rows stay in the batch
    with no loss tokens, so they count in neither the loss's normalisers nor its KL terms.
    false: they stay in the loss with advantage 0."""


@dataclass
class TRRDLossConfig:
    """Trust Region Ratio Distillation (losses/trrd.py): the clipped surrogate on the ratio
    log r = alpha * (lp - lp_old) + (1 - alpha) * clamp(lp - lp_T, -c, c), i.e.
    pi_S / (pi_old^alpha * pi_T^(1 - alpha)) where the clamp does not bind."""

    alpha: float = 0.5
    """Weight of the old policy in the ratio's anchor, in [0, 1]; 1 - alpha is the teacher's
    (1: GRPO)."""
    eps_low: float = 0.2
    """Lower clip: the ratio is clipped at 1 - eps_low (in [0, 1))."""
    eps_high: float = 0.28
    """Upper clip: the ratio is clipped at 1 + eps_high (>= 0; DAPO's clip-higher)."""
    teacher_logratio_clamp: float = 1.0
    """c > 0: the teacher term lp - lp_T (the current student's log-prob minus the teacher's, per
    token, in nats) is clamped to [-c, c] before it enters log r with weight 1 - alpha
    (math.inf: no clamp)."""
    clamp_grad: str = choice("detach", CLAMP_GRAD)
    """Gradient of the clamped teacher term: detach (torch.clamp: none where |lp - lp_T| > c;
    the alpha * (lp - lp_old) term still passes its gradient) or straight_through (the clamped
    value, the gradient of the unclamped lp - lp_T)."""
    agg: str = choice("seq_mean_token_mean", AGGREGATIONS)
    """How token losses become the batch loss (losses/aggregate.py): seq_mean_token_mean (mean
    over each sequence's loss tokens, then over sequences) or token_mean (over all loss
    tokens)."""
    dual_clip: Optional[float] = None
    """Dual clip c > 1: where A < 0 the token loss is at most -c * A (None: off)."""
    kl_beta: float = 0.0
    """beta of the paper's Eq. 4: beta * KL(pi_S || pi_ref), pi_ref the student's weights at the
    start of the run (kept in host memory, swapped in for a forward-only pass; models/reference.py).
    0: no reference pass."""
    kl_estimator: str = choice("k3", KL_ESTIMATORS)
    """Per-token estimator of the reference KL from x = lp - lp_ref on the student's tokens:
    k1: x, k2: x^2/2, k3: exp(-x)-1+x (losses/kl.py)."""

    def build(self, step: int) -> TRRDLoss:
        """The TRRD loss with these options (the same at every step)."""
        return TRRDLoss(alpha=self.alpha, eps_low=self.eps_low, eps_high=self.eps_high,
                        teacher_logratio_clamp=self.teacher_logratio_clamp,
                        clamp_grad=self.clamp_grad, agg=self.agg, dual_clip=self.dual_clip,
                        kl_beta=self.kl_beta, kl_estimator=self.kl_estimator)

    def validate(self) -> None:
        """ValueError naming the first option outside its range."""
        if not 0 <= self.alpha <= 1:
            raise ValueError(f"loss.trrd.alpha: {self.alpha} is outside [0, 1]")
        _check_clip("loss.trrd", self.eps_low, self.eps_high, self.dual_clip)
        if self.teacher_logratio_clamp <= 0:
            raise ValueError(f"loss.trrd.teacher_logratio_clamp: {self.teacher_logratio_clamp} "
                             f"must be > 0")
        _check_kl_beta("loss.trrd", self.kl_beta)


@dataclass
class GRPOLossConfig:
    """GRPO's clipped surrogate with ratio pi_S / pi_old (losses/grpo.py)."""

    eps_low: float = 0.2
    """Lower clip: the ratio is clipped at 1 - eps_low (in [0, 1))."""
    eps_high: float = 0.28
    """Upper clip: the ratio is clipped at 1 + eps_high (>= 0)."""
    agg: str = choice("seq_mean_token_mean", AGGREGATIONS)
    """How token losses become the batch loss, as loss.trrd.agg (losses/aggregate.py)."""
    dual_clip: Optional[float] = None
    """Dual clip c > 1: where A < 0 the token loss is at most -c * A (None: off)."""
    kl_beta: float = 0.0
    """beta * KL(pi_S || pi_ref), as loss.trrd.kl_beta."""
    kl_estimator: str = choice("k3", KL_ESTIMATORS)
    """Estimator of the reference KL, as loss.trrd.kl_estimator (losses/kl.py)."""

    def build(self, step: int) -> GRPOLoss:
        """The GRPO loss with these options (the same at every step)."""
        return GRPOLoss(eps_low=self.eps_low, eps_high=self.eps_high, agg=self.agg,
                        dual_clip=self.dual_clip, kl_beta=self.kl_beta,
                        kl_estimator=self.kl_estimator)

    def validate(self) -> None:
        """ValueError naming the first option outside its range."""
        _check_clip("loss.grpo", self.eps_low, self.eps_high, self.dual_clip)
        _check_kl_beta("loss.grpo", self.kl_beta)


@dataclass
class KDRLLossConfig:
    """KDRL (losses/kdrl.py): GRPO's surrogate plus beta * KL(pi_S || pi_T) on the student's
    rollout tokens that selection.policy picks (all of them by default)."""

    beta_init: float = 5e-3
    """Weight of the teacher KL at the start of the anneal."""
    beta_min: float = 1e-3
    """Weight of the teacher KL from step anneal_steps on; in [0, beta_init]."""
    anneal_steps: int = 0
    """beta = beta_init + (beta_min - beta_init) * min(step / anneal_steps, 1) at RL step `step`
    (the first is 1); 0: beta_init at every step."""
    kl_estimator: str = choice("k2", KL_ESTIMATORS)
    """Per-token estimator of the teacher KL from x = lp - lp_T on the student's tokens:
    k1: x, k2: x^2/2, k3: exp(-x)-1+x (losses/kl.py)."""
    eps_low: float = 0.2
    """Lower clip of the surrogate: the ratio is clipped at 1 - eps_low (in [0, 1))."""
    eps_high: float = 0.28
    """Upper clip of the surrogate: the ratio is clipped at 1 + eps_high (>= 0)."""
    agg: str = choice("seq_mean_token_mean", AGGREGATIONS)
    """How token losses become the batch loss, for both terms, as loss.trrd.agg."""

    def build(self, step: int) -> KDRLLoss:
        """The KDRL loss at RL step `step`: beta annealed (anneal_steps 0: beta_init)."""
        beta = self.beta_init if self.anneal_steps == 0 else kdrl_beta(
            step, self.beta_init, self.beta_min, self.anneal_steps)
        return KDRLLoss(beta=beta, kl_estimator=self.kl_estimator, eps_low=self.eps_low,
                        eps_high=self.eps_high, agg=self.agg)

    def validate(self) -> None:
        """ValueError naming the first option outside its range."""
        _check_clip("loss.kdrl", self.eps_low, self.eps_high, None)
        if not 0 <= self.beta_min <= self.beta_init:
            raise ValueError(f"loss.kdrl.beta_min: {self.beta_min} must be in [0, "
                             f"loss.kdrl.beta_init = {self.beta_init}]")
        if self.anneal_steps < 0:
            raise ValueError(f"loss.kdrl.anneal_steps: {self.anneal_steps} must be >= 0")


@dataclass
class SFTLossConfig:
    """Token negative log-likelihood (losses/sft.py)."""

    agg: str = choice("token_mean", AGGREGATIONS)
    """How token losses become the batch loss, as loss.trrd.agg (losses/aggregate.py)."""

    def build(self, step: int) -> SFTLoss:
        """The SFT loss with these options (the same at every step; no ranges to validate)."""
        return SFTLoss(agg=self.agg)


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

    def validate(self) -> None:
        """Every section's ranges, whichever the algorithm uses (a bad value is a typo either
        way; loss.sft has only a named choice)."""
        self.trrd.validate()
        self.grpo.validate()
        self.kdrl.validate()


@dataclass
class SelectionConfig:
    """Which loss tokens use the teacher (data/selection.py), decided per sequence and applied
    to all its loss tokens: TRRD anchors their ratio (the others take GRPO's ratio), KDRL adds
    its teacher KL on them only."""

    policy: str = choice("paper", SELECTION_POLICIES)
    """paper: every loss token; advantage / alignment / both: the loss tokens of the sequences
    passing the tau_adv test, the tau_align test, or both."""
    tau_adv: float = 0.0
    """advantage / both: a sequence passes when |A| >= tau_adv (A: its advantage; for per-token
    advantages, their mean over its loss tokens)."""
    tau_align: float = 0.0
    """alignment / both: a sequence passes when the mean over its loss tokens of lp_T - lp_old
    is >= tau_align (nats per token)."""


@dataclass
class ImitationConfig:
    """Selective imitation of teacher trajectories (rollout.teacher_samples > 0; data/selection.py
    `gate_trajectories`, losses/joint.py). Each teacher trajectory is imitated only when every
    switched-on gate passes:

      aligned        the student can follow it: align_metric within tau_align
      raises reward  its advantage A_T >= tau_adv
      explore        the prompt is not left to free RL exploration: the student group's success
                     rate (rewards >= success_reward) < tau_success

    total = RL loss on the student's rows + lambda * distillation loss on the selected rows
    (lambda: weight, or its anneal to weight_end).
    """

    advantage: str = choice("group", TEACHER_ADVANTAGES)
    """How teacher rows get an advantage: "group" (the group's mean and std include them) or
    "baseline" (against the student group's mean and std, which exclude them; without std
    scaling under dr_grpo or when the student group's std is 0). Two validation
    sweeps (docs/reproduction.md) did not separate them (group 34.2 / 35.1 vs baseline 33.2 /
    34.9 mean@4); "group" is GRPO's own convention."""
    gate_aligned: bool = True
    """Switch the aligned gate on."""
    align_metric: str = choice("gap", ALIGN_METRICS)
    """"gap": the mean over the trajectory's response tokens of lp_T - lp_S; the gate passes
    when it is at most tau_align. "loglik": the student's mean per-token log-likelihood lp_S;
    the gate passes when it is at least tau_align. lp_S: the student's log-prob at rollout
    time, lp_T: the teacher's."""
    tau_align: float = 1.0
    """The aligned gate's threshold, in nats per token (the gap, or the log-likelihood)."""
    gate_advantage: bool = True
    """Switch the raises-reward gate on."""
    tau_adv: float = 0.1
    """A teacher trajectory raises reward when its advantage A_T >= tau_adv (imitation.advantage
    says how A_T is computed)."""
    gate_explore: bool = True
    """Switch the explore gate on."""
    tau_success: float = 0.5
    """In (0, 1]: prompts whose student samples succeed at this rate or more are left to RL (no
    imitation); the gate passes when the rate is < tau_success."""
    success_reward: float = 1.0
    """The explore gate counts a student sample as a success when its reward is >= this."""
    distill_loss: str = choice("nll", DISTILL_LOSSES)
    """"ratio": the RL loss's clipped ratio (TRRD's, or GRPO's under algorithm=grpo) on the
    teacher's tokens, importance-weighted from the teacher to the ratio's anchor and truncated at
    importance_cap; "nll": token negative log-likelihood (behaviour cloning). Two validation
    sweeps (docs/reproduction.md) did not separate them (nll 35.1 / 34.7 vs ratio 34.2 / 35.1
    mean@4); "nll" needs no off-policy correction, so it is the simpler of two equals."""
    importance_cap: float = 1.0
    """The "ratio" term's importance weight is min((pi_old / pi_T)^alpha, importance_cap), with
    alpha = 1 under algorithm=grpo; > 0 (.inf: no truncation)."""
    weight: float = 1.0
    """lambda (>= 0): the distillation term's weight (at the start, when weight_end is set)."""
    weight_end: Optional[float] = None
    """lambda = weight + (weight_end - weight) * min(step / weight_steps, 1) at RL step `step`
    (the first is 1; weight_steps 0: weight_end at every step). None: `weight` throughout."""
    weight_steps: int = 0
    """Steps of the lambda anneal (weight_end), reaching weight_end at this step."""

    def weight_at(self, step: int) -> float:
        """lambda at RL step `step`: weight, or its anneal to weight_end."""
        return self.weight if self.weight_end is None else kdrl_beta(
            step, self.weight, self.weight_end, self.weight_steps)

    def build(self, rl: Union[TRRDLoss, GRPOLoss], step: int) -> JointLoss:
        """The joint loss at RL step `step`: `rl` (the algorithm's bound loss) on the student's
        rows plus lambda times the distillation term on the selected teacher rows."""
        return JointLoss(rl=rl, distill=self.distill_loss, weight=self.weight_at(step),
                         importance_cap=self.importance_cap)

    def validate(self) -> None:
        """ValueError naming the first option outside its range."""
        if self.weight < 0:
            raise ValueError(f"imitation.weight (lambda) must be >= 0, got {self.weight}")
        if self.weight_steps < 0:
            raise ValueError(f"imitation.weight_steps must be >= 0, got {self.weight_steps}")
        if self.weight_end is not None and self.weight_end < 0:
            raise ValueError(f"imitation.weight_end (lambda at the end) must be >= 0, got "
                             f"{self.weight_end}")
        if not self.importance_cap > 0:
            raise ValueError(f"imitation.importance_cap must be > 0 (.inf: no truncation), got "
                             f"{self.importance_cap}")
        if not 0 < self.tau_success <= 1:
            raise ValueError(f"imitation.tau_success must be in (0, 1], got {self.tau_success}")
