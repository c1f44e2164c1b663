"""LossInputs (losses/inputs.py): a renamed input fails loudly on either side."""

import pytest
import torch
from torch import Tensor

from rlad_megatron.data.batch import TrainBatch
from rlad_megatron.losses import LOSSES, LossInputs, grpo_loss
from rlad_megatron.losses.inputs import INPUT_FIELDS, check_loss_signature, input_parameters


def _batch(b=2, s=5):
    tokens = torch.zeros(b, s, dtype=torch.long)
    mask = torch.ones(b, s, dtype=torch.bool)
    return TrainBatch(tokens=tokens, prompt_lengths=torch.ones(b, dtype=torch.long),
                      response_lengths=torch.full((b,), s - 1), loss_mask=mask,
                      sampler_logprobs=torch.zeros(b, s), group_ids=torch.zeros(b),
                      rewards=torch.ones(b), advantages=torch.ones(b),
                      old_logprobs=torch.zeros(b, s))


def test_every_registered_loss_takes_only_known_inputs():
    for name, fn in LOSSES.items():
        check_loss_signature(fn)
        assert set(input_parameters(fn)) <= set(INPUT_FIELDS), name


def test_a_loss_with_a_renamed_tensor_parameter_is_refused():
    def anchored_loss(logprobs: Tensor, old_logprobs: Tensor, *,
                      anchor_mask: Tensor | None = None):
        return logprobs.sum(), {}

    with pytest.raises(TypeError, match="tensor parameter 'anchor_mask' is not a LossInputs field"):
        check_loss_signature(anchored_loss)


def test_inputs_come_from_the_batch_by_field_and_required_ones_must_be_set():
    inputs = LossInputs.from_record(_batch())
    args = inputs.arguments_for(grpo_loss)
    assert set(args) == {"old_logprobs", "advantages", "loss_mask", "ref_logprobs"}
    assert args["ref_logprobs"] is None  # optional and absent
    with pytest.raises(ValueError, match="loss trrd_loss needs teacher_logprobs"):
        inputs.arguments_for(LOSSES["trrd"])


def test_a_record_missing_a_field_is_named():
    class Partial:
        old_logprobs = advantages = loss_mask = torch.zeros(1)

    with pytest.raises(AttributeError, match="teacher_logprobs"):
        LossInputs.from_record(Partial())
