"""data/sft_batch.py: the SFT batch's layout against hand-written rows (prompt, target, EOS,
right padding; the loss on the target and EOS of kept rows), its row operations, and what a
loss reads from it: the mask alone, so an RL loss is refused by name."""

import pytest
import torch

from rlad_megatron.config.algorithms import GRPOLossConfig, SFTLossConfig
from rlad_megatron.data.sft_batch import SFTBatch
from rlad_megatron.losses.inputs import Normalisers


def test_rows_masks_and_row_operations():
    b = SFTBatch.build([[5, 6], [7]], [[8, 9, 10], [11]], eos_id=2, pad_id=0, keep=[True, False])
    assert b.tokens.tolist() == [[5, 6, 8, 9, 10, 2], [7, 11, 2, 0, 0, 0]]
    assert b.loss_mask.tolist() == [[False, False, True, True, True, True], [False] * 6]
    assert b.prompt_lengths.tolist() == [2, 1] and b.response_lengths.tolist() == [4, 2]
    second = b.select_rows([1]).with_width(3)
    assert second.tokens.tolist() == [[7, 11, 2]] and second.response_lengths.tolist() == [2]
    with pytest.raises(ValueError, match=r"SFTBatch.loss_mask: shape \(2, 5\)"):
        SFTBatch(tokens=b.tokens, prompt_lengths=b.prompt_lengths,
                 response_lengths=b.response_lengths, loss_mask=b.loss_mask[:, :5])


def test_a_loss_reads_the_mask_alone():
    b = SFTBatch.build([[5, 6]], [[8, 9]], eos_id=2, pad_id=0)
    inputs = b.loss_inputs()
    assert torch.equal(inputs.loss_mask, b.loss_mask) and inputs.old_logprobs is None
    sft = SFTLossConfig().build(step=1)
    inputs.require(sft.needs, sft.name)
    lp = torch.full(b.tokens.shape, -0.5)
    value, _ = sft(lp, inputs, Normalisers())  # None: this call's own counts
    assert float(value) == pytest.approx(0.5)  # NLL 0.5 on each of the 3 loss tokens
    grpo = GRPOLossConfig().build(step=1)
    with pytest.raises(ValueError, match="loss grpo needs old_logprobs"):
        inputs.require(grpo.needs, grpo.name)
