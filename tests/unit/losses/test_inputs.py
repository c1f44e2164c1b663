"""LossInputs (losses/inputs.py): a renamed input fails loudly on either side."""

import pytest
import torch

from rlad_megatron.data.batch import TrainBatch
from rlad_megatron.losses import GRPOLoss, LossInputs, TRRDLoss


def _batch(b=2, s=5):
    tokens = torch.zeros(b, s, dtype=torch.long)
    mask = torch.ones(b, s, dtype=torch.bool)
    return TrainBatch(tokens=tokens, prompt_lengths=torch.ones(b, dtype=torch.long),
                      response_lengths=torch.full((b,), s - 1), loss_mask=mask,
                      sampler_logprobs=torch.zeros(b, s), group_ids=torch.zeros(b),
                      rewards=torch.ones(b), advantages=torch.ones(b),
                      old_logprobs=torch.zeros(b, s))


def test_inputs_come_from_the_batch_by_field_and_needed_ones_must_be_set():
    batch = _batch()
    inputs = LossInputs.from_record(batch)
    assert inputs.old_logprobs is batch.old_logprobs and inputs.loss_mask is batch.loss_mask
    assert inputs.teacher_logprobs is None
    inputs.require(GRPOLoss.needs, "grpo")  # the batch has every input GRPO needs
    with pytest.raises(ValueError, match="loss trrd needs teacher_logprobs, which this batch"):
        inputs.require(TRRDLoss.needs, "trrd")


def test_a_record_missing_a_field_is_named():
    class Partial:
        old_logprobs = advantages = loss_mask = torch.zeros(1)

    with pytest.raises(AttributeError, match="teacher_logprobs"):
        LossInputs.from_record(Partial())
