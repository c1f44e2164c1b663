"""The pure losses' options at the run config's defaults, for tests that call losses/*.py directly
(the pure functions take every option as a required keyword): the options of the bound loss that
the config section builds (config/algorithms.py), with `over` replacing some.

    trrd_loss(lp, old, teacher, adv, mask, **trrd_opts(alpha=0.3))
"""

import dataclasses

from rlad_megatron.config.algorithms import (GRPOLossConfig, KDRLLossConfig, SFTLossConfig,
                                             TRRDLossConfig)


def _options(section, over: dict) -> dict:
    options = dataclasses.asdict(section.build(step=1))
    unknown = set(over) - set(options)
    assert not unknown, f"not options of {type(section).__name__}: {sorted(unknown)}"
    return {**options, **over}


def trrd_opts(**over) -> dict:
    return _options(TRRDLossConfig(), over)


def grpo_opts(**over) -> dict:
    return _options(GRPOLossConfig(), over)


def kdrl_opts(**over) -> dict:
    """beta is loss.kdrl's beta_init (the schedule at step 1 without an anneal)."""
    return _options(KDRLLossConfig(), over)


def sft_opts(**over) -> dict:
    return _options(SFTLossConfig(), over)
