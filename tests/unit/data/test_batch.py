"""The batch contract (data/batch.py): shapes checked at construction, row selection and
micro-batch splitting keep every field aligned."""

import dataclasses

import pytest
import torch

from rlad_megatron.data.batch import RolloutBatch, TrainBatch
from rlad_megatron.data.selection import select_teacher_tokens


def rollout(b=5, s=6):
    tokens = torch.arange(b * s).reshape(b, s)
    prompt = torch.full((b,), 2)
    response = torch.tensor([4, 3, 1, 2, 4])[:b]
    pos = torch.arange(s)[None, :]
    mask = (pos >= prompt[:, None]) & (pos < (prompt + response)[:, None])
    return RolloutBatch(tokens=tokens, prompt_lengths=prompt, response_lengths=response,
                        loss_mask=mask, sampler_logprobs=-torch.rand(b, s),
                        group_ids=torch.arange(b) // 2)


def train_batch():
    r = rollout()
    b, s = r.tokens.shape
    return TrainBatch.from_rollout(r, rewards=torch.rand(b), advantages=torch.randn(b),
                                   old_logprobs=-torch.rand(b, s),
                                   teacher_logprobs=-torch.rand(b, s))


def test_shapes_are_checked_naming_the_field():
    r = rollout()
    with pytest.raises(ValueError, match=r"RolloutBatch.group_ids: shape \(4,\), expected \(5,\)"):
        dataclasses.replace(r, group_ids=torch.zeros(4))
    with pytest.raises(ValueError, match="TrainBatch.old_logprobs"):
        dataclasses.replace(train_batch(), old_logprobs=torch.zeros(5, 5))


def test_split_and_select_rows_keep_fields_aligned():
    t = train_batch()
    t = t.with_selection(select_teacher_tokens(t.advantages, t.old_logprobs, t.teacher_logprobs,
                                               t.loss_mask, policy="advantage", tau_adv=0.5))
    parts = t.split(2)
    assert [p.batch_size for p in parts] == [2, 2, 1]
    for f in dataclasses.fields(TrainBatch):
        value = getattr(t, f.name)
        if isinstance(value, torch.Tensor):
            assert torch.equal(torch.cat([getattr(p, f.name) for p in parts]), value), f.name
        else:
            assert all(getattr(p, f.name) == value for p in parts), f.name
    rows = t.select_rows([4, 0])
    assert torch.equal(rows.tokens, t.tokens[[4, 0]])
    assert torch.equal(rows.teacher_mask, t.teacher_mask[[4, 0]])
    assert isinstance(rows, TrainBatch) and rows.seq_len == t.seq_len


def test_split_rejects_non_positive_size():
    with pytest.raises(ValueError, match="micro_batch_size"):
        rollout().split(0)


def test_interleave_groups_puts_each_prompts_teacher_rows_after_its_students():
    from rlad_megatron.data.batch import interleave_groups

    def rollout(rows, width, offset):
        tokens = torch.arange(rows * width).reshape(rows, width) + offset
        mask = torch.ones(rows, width, dtype=torch.bool)
        return RolloutBatch(tokens=tokens, prompt_lengths=torch.ones(rows, dtype=torch.long),
                            response_lengths=torch.full((rows,), width - 1),
                            loss_mask=mask, sampler_logprobs=torch.zeros(rows, width),
                            group_ids=torch.arange(rows) // (rows // 2))

    student, teacher = rollout(4, 3, 0), rollout(2, 5, 100)   # 2 prompts: G = 2, K = 1
    merged, rows = interleave_groups(student, teacher, group_size=2, teacher_samples=1,
                                     pad_token_id=-1)
    assert rows.tolist() == [False, False, True, False, False, True]
    assert merged.group_ids.tolist() == [0, 0, 0, 1, 1, 1]
    assert merged.tokens[0].tolist() == [0, 1, 2, -1, -1]          # padded to the teacher's 5
    assert merged.tokens[2].tolist() == [100, 101, 102, 103, 104]
    assert merged.loss_mask[0].tolist() == [True, True, True, False, False]
    with pytest.raises(ValueError, match="not 2 prompts of 2 \\+ 2"):
        interleave_groups(student, teacher, group_size=2, teacher_samples=2)
