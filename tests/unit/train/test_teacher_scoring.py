"""train/teacher_scoring.py on hand-built rollouts, single process, a real tiny megatron teacher:
the scorer is chosen by how the teacher is held; scoring during the rollout (parts handed over
as they finish, in any order, of different widths) gives the whole-batch pass's log-probs
(each row's depend only on its own tokens) and reports its own useful-token share and time; the
pass after the rollout is timed as the teacher_logprobs phase; the guard stops a teacher whose
log-probs cannot be right, naming its checkpoint. The whole-run comparison of the modes at
DP=2, TP=2 and PP=2 is tests/dist/train/test_trainer.py's.
"""

from types import SimpleNamespace

import pytest
import torch

from distributed_helpers import process_group  # noqa: F401 (module fixture)
from rlad_megatron.data.batch import RolloutBatch
from rlad_megatron.models.build import build_teacher
from rlad_megatron.models.spec import get_preset
from rlad_megatron.config.run import RunConfig
from rlad_megatron.train.phases import micro_batches
from rlad_megatron.train.teacher_scoring import (FRAC, AfterRollout, DuringRollout, NoTeacher,
                                                 Resident, teacher_scorer)
from rlad_megatron.bookkeeping.timers import PhaseTimer


@pytest.fixture(scope="module")
def par():
    from rlad_megatron.runtime import ParallelConfig, destroy_parallel, init_parallel

    yield init_parallel(ParallelConfig(seed=3))
    destroy_parallel()


def _teacher(par):
    """A tiny teacher whose next-token distributions are far from uniform (random weights with
    the output layer scaled up: the guard refuses near-uniform log-probs as weights not
    loaded)."""
    teacher = build_teacher(get_preset("tiny-llama"), par)
    with torch.no_grad():
        teacher.modules[0].output_layer.weight.mul_(40.0)
    return teacher


def _run(par, teacher, *, during: bool) -> SimpleNamespace:
    cfg = RunConfig()
    cfg.rollout.temperature = 0.7
    cfg.train.micro_batch_size = 2
    cfg.teacher.score_during_rollout = during
    cfg.teacher.checkpoint = "/ckpt/teacher-7b"
    return SimpleNamespace(cfg=cfg, par=par, teacher=teacher, timer=PhaseTimer(cuda_sync=False))


def _rollout(rows: int = 6, width: int = 14, seed: int = 0) -> RolloutBatch:
    """Prompts of 3-5 tokens, responses of 2-8, right-padded with 0 (data/batch.py layout)."""
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(3, 6, (rows,), generator=g)
    response = torch.randint(2, 9, (rows,), generator=g)
    tokens = torch.zeros(rows, width, dtype=torch.long)
    mask = torch.zeros(rows, width, dtype=torch.bool)
    for r in range(rows):
        n = int(prompt[r] + response[r])
        tokens[r, :n] = torch.randint(10, 200, (n,), generator=g)
        mask[r, int(prompt[r]):n] = True
    return RolloutBatch(tokens=tokens, prompt_lengths=prompt, response_lengths=response,
                        loss_mask=mask, sampler_logprobs=torch.zeros(rows, width),
                        group_ids=torch.arange(rows) // 2)


def _part(batch: RolloutBatch, rows: slice) -> RolloutBatch:
    """Rows of `batch` cut to their own longest row, as a generation micro-batch arrives."""
    width = int((batch.prompt_lengths[rows] + batch.response_lengths[rows]).max())
    return RolloutBatch(tokens=batch.tokens[rows, :width],
                        prompt_lengths=batch.prompt_lengths[rows],
                        response_lengths=batch.response_lengths[rows],
                        loss_mask=batch.loss_mask[rows, :width],
                        sampler_logprobs=batch.sampler_logprobs[rows, :width],
                        group_ids=batch.group_ids[rows])


def test_the_scorer_follows_how_the_teacher_is_held(par):
    teacher = build_teacher(get_preset("tiny-llama"), par)
    assert isinstance(teacher_scorer(_run(par, None, during=False)), NoTeacher)
    scorer = teacher_scorer(_run(par, teacher, during=False))
    assert type(scorer) is Resident and isinstance(scorer.begin_step(), AfterRollout)
    during = teacher_scorer(_run(par, teacher, during=True)).begin_step()
    assert isinstance(during, DuringRollout) and during.hook is during
    assert NoTeacher().begin_step().hook is None
    assert NoTeacher().finish(_rollout(), None, 0.5) == (None, {})


def test_scoring_during_the_rollout_gives_the_whole_batch_pass(par):
    teacher = _teacher(par)
    batch = _rollout()
    after_run = _run(par, teacher, during=False)
    plan = micro_batches(after_run, batch)
    after = teacher_scorer(after_run).begin_step()
    whole, after_metrics = after.finish(batch, plan, 0.25)
    assert after_metrics == {FRAC: 0.25}  # the log-prob passes' share: the same plan
    assert after_run.timer.pop()["time/teacher_logprobs_s"] > 0

    during_run = _run(par, teacher, during=True)
    scoring = teacher_scorer(during_run).begin_step()
    for rows in (slice(4, 6), slice(0, 2), slice(2, 4)):  # groups finish in any order
        scoring.hook(rows, _part(batch, rows))
    assert "time/teacher_logprobs_s" not in during_run.timer.pop()
    parts, metrics = scoring.finish(batch, plan, 0.25)
    assert parts.shape == whole.shape == batch.tokens.shape
    torch.testing.assert_close(parts * batch.loss_mask, whole * batch.loss_mask, rtol=0,
                               atol=1e-5)
    assert (whole[batch.loss_mask] < 0).all() and metrics["time/teacher_during_rollout_s"] > 0
    real = float((batch.prompt_lengths + batch.response_lengths).sum())
    processed = sum(2 * int((batch.prompt_lengths[r] + batch.response_lengths[r]).max())
                    for r in (slice(0, 2), slice(2, 4), slice(4, 6)))
    assert metrics[FRAC] == pytest.approx(real / processed)


def test_the_guard_stops_a_teacher_whose_logprobs_cannot_be_right(par):
    teacher = build_teacher(get_preset("tiny-llama"), par)
    scorer = teacher_scorer(_run(par, teacher, during=False))
    batch = _rollout()
    bad = torch.full(batch.tokens.shape, -1.0)
    bad[batch.loss_mask.nonzero()[0].tolist()] = float("nan")
    with pytest.raises(ValueError, match=r"teacher log-probs \(/ckpt/teacher-7b\).*NaN"):
        scorer.guard(bad, batch.loss_mask)
    scorer.guard(torch.full(batch.tokens.shape, -1.0), batch.loss_mask)  # finite: passes
