"""The loss registry (losses/__init__.py): names map to the pure loss functions."""

import pytest

from rlad_megatron.losses import (LOSSES, get_loss, grpo_loss, joint_loss, kdrl_loss, sft_loss,
                                  trrd_loss)


def test_registry_maps_names_to_functions():
    assert LOSSES == {"trrd": trrd_loss, "grpo": grpo_loss, "kdrl": kdrl_loss, "sft": sft_loss,
                      "joint": joint_loss}
    assert get_loss("trrd") is trrd_loss


def test_unknown_loss_lists_known_names():
    with pytest.raises(ValueError, match=r"'dpo'.*\['grpo', 'joint', 'kdrl', 'sft', 'trrd'\]"):
        get_loss("dpo")
