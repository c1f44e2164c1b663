"""The bound losses that the config sections build (config/algorithms.py `build`,
losses/bound.py) pass exactly the section's values to the pure loss functions.

Each section is set to non-default values and its bound loss compared, value, gradient and
metrics bit for bit, with the pure function called with those values written out here. The data
make every option count (each one changed alone changes the result), so a binding that drops,
swaps or defaults an option fails. `needs` is checked the same way: a needed input set to None
breaks the call, an unneeded one does not.
"""

import dataclasses

import pytest
import torch

from rlad_megatron.losses import (LossInputs, Normalisers, grpo_loss, joint_loss, kdrl_loss,
                                  sft_loss, trrd_loss)
from rlad_megatron.config.algorithms import (GRPOLossConfig, ImitationConfig,
                                             KDRLLossConfig, SFTLossConfig, TRRDLossConfig)

D = torch.float64
TRRD = dict(alpha=0.3, eps_low=0.15, eps_high=0.4, teacher_logratio_clamp=0.7,
            clamp_grad="straight_through", agg="token_mean", dual_clip=1.5, kl_beta=0.05,
            kl_estimator="k2")
GRPO = dict(eps_low=0.15, eps_high=0.4, agg="token_mean", dual_clip=2.5, kl_beta=0.05,
            kl_estimator="k1")
KDRL = dict(beta_init=0.3, beta_min=0.1, anneal_steps=4, kl_estimator="k1", eps_low=0.15,
            eps_high=0.4, agg="token_mean")
SFT = dict(agg="seq_mean_token_mean")
IMITATION = dict(distill_loss="ratio", weight=0.7, weight_end=0.3, weight_steps=4,
                 importance_cap=1.5)
OTHER = dict(alpha=0.6, eps_low=0.6, eps_high=0.1, teacher_logratio_clamp=1.3,
             clamp_grad="detach", dual_clip=4.0, kl_beta=0.1, beta_init=0.5, beta_min=0.05,
             anneal_steps=8, distill_loss="nll", weight=0.9, weight_end=0.1, weight_steps=2,
             importance_cap=1.1)
"""A second value of each option, for the sensitivity check (agg, kl_estimator: by section)."""


def _inputs(seed=0, b=8, s=10) -> LossInputs:
    """Ratios far from 1 both ways, teacher gaps beyond the clamp, unequal row lengths."""
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(b, s, generator=g, dtype=D) * 3 - 0.05
    mask = torch.rand(b, s, generator=g) > 0.25
    mask[:, 0] = False
    mask[0, 1:] = True
    mask[1, 3:] = False
    adv = torch.randn(b, generator=g, dtype=D)
    adv[4:] = adv[4:].abs() * torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=D)  # distilled rows
    return LossInputs(old_logprobs=old, advantages=adv,
                      loss_mask=mask & (torch.arange(b) < 4)[:, None],
                      teacher_logprobs=old + 1.5 * torch.randn(b, s, generator=g, dtype=D),
                      teacher_mask=torch.rand(b, s, generator=g) > 0.2,
                      ref_logprobs=old + 0.5 * torch.randn(b, s, generator=g, dtype=D),
                      distill_mask=mask & (torch.arange(b) >= 4)[:, None])


def _logprobs(inputs: LossInputs, seed=1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    noise = 1.2 * torch.randn(inputs.old_logprobs.shape, generator=g, dtype=D)
    return (inputs.old_logprobs + noise).requires_grad_()


def _reference_trrd(lp, x: LossInputs, o: dict):
    return trrd_loss(lp, x.old_logprobs, x.teacher_logprobs, x.advantages, x.loss_mask,
                     alpha=o["alpha"], eps_low=o["eps_low"], eps_high=o["eps_high"],
                     teacher_logratio_clamp=o["teacher_logratio_clamp"], agg=o["agg"],
                     clamp_grad=o["clamp_grad"], dual_clip=o["dual_clip"], kl_beta=o["kl_beta"],
                     kl_estimator=o["kl_estimator"], teacher_mask=x.teacher_mask,
                     ref_logprobs=x.ref_logprobs)


def _reference_grpo(lp, x: LossInputs, o: dict):
    return grpo_loss(lp, x.old_logprobs, x.advantages, x.loss_mask, eps_low=o["eps_low"],
                     eps_high=o["eps_high"], agg=o["agg"], dual_clip=o["dual_clip"],
                     kl_beta=o["kl_beta"], kl_estimator=o["kl_estimator"],
                     ref_logprobs=x.ref_logprobs)


def _reference_kdrl(lp, x: LossInputs, o: dict, step: int):
    progress = min(step / o["anneal_steps"], 1.0)  # the anneal, written out
    beta = o["beta_init"] + (o["beta_min"] - o["beta_init"]) * progress
    return kdrl_loss(lp, x.old_logprobs, x.teacher_logprobs, x.advantages, x.loss_mask,
                     beta=beta, kl_estimator=o["kl_estimator"], eps_low=o["eps_low"],
                     eps_high=o["eps_high"], agg=o["agg"], teacher_mask=x.teacher_mask)


def _reference_sft(lp, x: LossInputs, o: dict):
    return sft_loss(lp, x.loss_mask, agg=o["agg"])


def _reference_joint(lp, x: LossInputs, rl: dict, im: dict, step: int, *, grpo: bool):
    weight = im["weight"] + (im["weight_end"] - im["weight"]) * min(step / im["weight_steps"], 1)
    rl_out = _reference_grpo(lp, x, rl) if grpo else _reference_trrd(lp, x, rl)
    return joint_loss(lp, x.old_logprobs, x.teacher_logprobs, x.advantages, x.distill_mask,
                      rl=rl_out, distill=im["distill_loss"], weight=weight,
                      importance_cap=im["importance_cap"], agg=rl["agg"],
                      alpha=1.0 if grpo else rl["alpha"], eps_low=rl["eps_low"],
                      eps_high=rl["eps_high"],
                      teacher_logratio_clamp=1.0 if grpo else rl["teacher_logratio_clamp"],
                      clamp_grad="detach" if grpo else rl["clamp_grad"])


STEP = 2
CASES = {  # name -> (build the bound loss from option dicts, the reference, the option dicts)
    "trrd": (lambda o: TRRDLossConfig(**o[0]).build(STEP),
             lambda lp, x, o: _reference_trrd(lp, x, o[0]), (TRRD,)),
    "grpo": (lambda o: GRPOLossConfig(**o[0]).build(STEP),
             lambda lp, x, o: _reference_grpo(lp, x, o[0]), (GRPO,)),
    "kdrl": (lambda o: KDRLLossConfig(**o[0]).build(STEP),
             lambda lp, x, o: _reference_kdrl(lp, x, o[0], STEP), (KDRL,)),
    "sft": (lambda o: SFTLossConfig(**o[0]).build(STEP),
            lambda lp, x, o: _reference_sft(lp, x, o[0]), (SFT,)),
    "joint-trrd": (lambda o: ImitationConfig(**o[1]).build(TRRDLossConfig(**o[0]).build(STEP),
                                                           STEP),
                   lambda lp, x, o: _reference_joint(lp, x, o[0], o[1], STEP, grpo=False),
                   (TRRD, IMITATION)),
    "joint-grpo": (lambda o: ImitationConfig(**o[1]).build(GRPOLossConfig(**o[0]).build(STEP),
                                                           STEP),
                   lambda lp, x, o: _reference_joint(lp, x, o[0], o[1], STEP, grpo=True),
                   (GRPO, IMITATION)),
}


def _result(fn):
    """(value, d value / d lp, metrics) of fn(lp) on the test data."""
    x = _inputs()
    lp = _logprobs(x)
    value, metrics = fn(lp, x)
    (grad,) = torch.autograd.grad(value, lp)
    return value.detach(), grad, {k: v.item() for k, v in metrics.items()}


def _same(a, b) -> bool:
    return torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2] == b[2]


def _same_distill_term(a, b) -> bool:
    """The distillation term's value and its gradient (on the distilled rows 4 to 7 only)."""
    return (a[2]["joint/distill_term"] == b[2]["joint/distill_term"]
            and torch.equal(a[1][4:], b[1][4:]))


REUSED = ("agg", "alpha", "eps_low", "eps_high", "teacher_logratio_clamp", "clamp_grad")
"""The RL loss's options that the joint loss's "ratio" term reuses."""


def _other(key: str, value):
    if key == "agg":
        return "seq_mean_token_mean" if value == "token_mean" else "token_mean"
    if key == "kl_estimator":
        return "k3"
    return OTHER[key]


@pytest.mark.parametrize("name", list(CASES))
def test_a_built_loss_passes_exactly_the_sections_values(name):
    build, reference, options = CASES[name]
    loss = build(options)
    got = _result(lambda lp, x: loss(lp, x, Normalisers()))
    assert _same(got, _result(lambda lp, x: reference(lp, x, options)))
    assert f"loss/{loss.name}" in got[2]
    for i, section in enumerate(options):  # every option counts on these data
        for key, value in section.items():
            changed = tuple({**s, key: _other(key, value)} if j == i else s
                            for j, s in enumerate(options))
            other = build(changed)
            changed_result = _result(lambda lp, x: other(lp, x, Normalisers()))
            assert not _same(got, changed_result), key
            if name.startswith("joint") and i == 0 and key in REUSED:
                assert not _same_distill_term(got, changed_result), key


@pytest.mark.parametrize("name", list(CASES))
def test_needs_names_the_inputs_the_loss_cannot_do_without(name):
    build, _, options = CASES[name]
    loss = build(tuple({**s, "kl_beta": 0.0} if "kl_beta" in s else s for s in options))
    lp = _logprobs(_inputs())
    for field in dataclasses.fields(LossInputs):
        x = dataclasses.replace(_inputs(), **{field.name: None})
        if field.name in loss.needs:
            with pytest.raises((TypeError, AttributeError, ValueError, AssertionError)):
                loss(lp, x, Normalisers())
        else:
            loss(lp, x, Normalisers())


@pytest.mark.parametrize("name", list(CASES))
def test_a_loss_reads_only_the_normalisers_it_names(name):
    build, _, options = CASES[name]
    loss = build(options)
    unread = {k: 10_000 for k in ("num_seqs", "num_tokens", "distill_num_seqs",
                                  "distill_num_tokens") if k not in loss.normalisers}
    base = _result(lambda lp, x: loss(lp, x, Normalisers()))
    assert _same(base, _result(lambda lp, x: loss(lp, x, Normalisers(**unread))))
