"""train/phases.py's functions (and train/generation.py's completions, which score decodes with)
on small hand-built batches, each against a reference the test computes itself (never the helper
the phase calls):

  dp_shard            the slices written out by hand for 12 items over 1-4 ranks.
  completions         response texts encoded with a real tokenizer, put between prompt ids (the
                      real chat format) and visible padding, with unknown ids (>= vocab_size) in
                      the middle and EOS at the end: the decode must give back the texts. Two
                      tokenizers: mistral-common's sentencepiece model (an unknown id makes it
                      raise) and a bare tokenizer.json whose EOS is an ordinary token, so that
                      decode would show it (sentencepiece drops EOS by itself).
  score               rewards written by hand for right and wrong answers under the config's
                      reward (data.reward: reasoning_gym's chain_sum scorer), row i against
                      items[i // G]; float32 and on the batch's device (the fake CUDA device).
  advantages          float64 group statistics written out from data/advantages.py's docstring,
                      for every estimator, both teacher-row modes, with and without
                      drop_zero_variance; the loss mask by hand from the zero-variance groups
                      and the teacher rows.
  select              the batch itself without teacher log-probs; per selection policy, the rule
                      of data/selection.py's docstring / SelectionConfig on alignments computed
                      in Python (off-mask tokens carry large gaps that must not count, thresholds
                      hit exactly); with teacher rows, the three gates of ImitationConfig computed
                      in Python, checked against a hand-written list of which gate each teacher
                      row fails, for every combination of imitation.gate_* switches.
  imitation_metrics   pass rates, teacher reward and advantage written by hand.
  pp_broadcast        pp == 1 returns the very tensor it was given.

Not here: `update` (and dp_mean, useful_token_frac): forward_backward runs megatron's schedule
and optimizer over a megatron model and all-reduces over a process group, so its NaN/Inf skip and
abort are covered by tests/dist/train/test_trainer.py. rollout, logprobs and the teacher passes
run a model: tests/unit/train/test_fake_device_step.py and test_teacher_scoring.py.
"""

import dataclasses
import importlib.metadata
import itertools
import math
import types

import pytest
import torch

from rlad_megatron.config.run import load_config
from rlad_megatron.data.advantages import ADVANTAGES
from rlad_megatron.data.batch import RolloutBatch, TrainBatch
from rlad_megatron.data.formats import encode_prompt, get_format
from rlad_megatron.data.rewards import get_reward
from rlad_megatron.data.selection import SELECTION_POLICIES
from rlad_megatron.data.tasks import PromptItem
from rlad_megatron.data.tokenizer import load_tokenizer
from rlad_megatron.runtime.fake_cuda import FakeCuda, FakeCudaTensor, on_fake_cuda
from rlad_megatron.train import generation, phases


@pytest.fixture(scope="module")
def mistral():
    return load_tokenizer(str(importlib.metadata.distribution("mistral-common").locate_file(
        "mistral_common/data/tokenizer.model.v1")))


@pytest.fixture(scope="module")
def bare_bpe(tmp_path_factory):
    """A byte-level BPE tokenizer.json with no special tokens, EOS given as the ordinary '#'."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(["The sum is 12. <answer>7</answer>"] * 4, trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    path = tmp_path_factory.mktemp("bpe") / "tokenizer.json"
    tok.save(str(path))
    return load_tokenizer(path, eos_token="#")


def _run(tokenizer=None, *overrides, dp=1, dp_rank=0):
    cfg = load_config(None, list(overrides))
    return types.SimpleNamespace(cfg=cfg, tokenizer=tokenizer, fmt=get_format(cfg.data.format),
                                 reward_fn=get_reward(cfg.data.reward),
                                 par=types.SimpleNamespace(dp=dp, dp_rank=dp_rank, pp=1))


ITEMS = [PromptItem(id="0", question="What is 3 + 4?", answer="7", task="chain_sum"),
         PromptItem(id="1", question="What is 10 - 3 + 5?", answer="12", task="chain_sum")]
G = 3
TEXTS = ["The sum is 7. <answer>7</answer>", "<answer>8</answer>", "<answer>12</answer>",
         "3 + 4 is 7, wrong prompt; <answer>12</answer>", "<answer>7</answer>", "12"]
REWARDS = [1.0, 0.0, 0.0, 1.0, 0.0, 0.0]
"""TEXTS answer ITEMS[i // G]; REWARDS by hand: only a tagged, right answer scores."""


def _rollout(prompts, responses, group, pad):
    """Row i: prompts[i // group], responses[i], then two or more `pad` ids."""
    rows = [(prompts[i // group], r) for i, r in enumerate(responses)]
    width = max(len(p) + len(r) for p, r in rows) + 2
    tokens = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, (p, r) in enumerate(rows):
        tokens[i, :len(p) + len(r)] = torch.tensor(p + r)
        mask[i, len(p):len(p) + len(r)] = True
    return RolloutBatch(tokens, torch.tensor([len(p) for p, _ in rows]),
                        torch.tensor([len(r) for _, r in rows]), mask,
                        torch.zeros(len(rows), width), torch.arange(len(rows)) // group)


def _text_rollout(run):
    """TEXTS as generated rows: unknown ids (model vocabulary rows past the tokenizer's) inside,
    EOS last, padded with a token that decodes visibly."""
    tok = run.tokenizer
    prompts = [encode_prompt(run.fmt, tok, item) for item in ITEMS]
    responses = []
    for j, text in enumerate(TEXTS):
        ids = tok.encode(text)
        responses.append(ids[:1] + [tok.vocab_size + j] + ids[1:] + [tok.eos_id])
    return _rollout(prompts, responses, G, pad=tok.encode("Z")[-1])


@pytest.mark.parametrize("dp", [1, 2, 3, 4])
def test_dp_shard_gives_rank_r_the_rth_contiguous_slice(dp):
    items = list(range(12))
    want = {1: [items], 2: [[0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11]],
            3: [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]],
            4: [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]]}[dp]
    got = [phases.dp_shard(_run(dp=dp, dp_rank=r), items) for r in range(dp)]
    assert got == want
    assert sum(got, []) == items


@pytest.mark.parametrize("which", ["mistral", "bare_bpe"])
def test_completions_decode_the_response_alone(which, request):
    tok = request.getfixturevalue(which)
    run = _run(tok)
    if which == "bare_bpe":  # the EOS filter is what keeps '#' out of the text
        assert tok.decode([tok.eos_id]) == "#"
    assert generation.completions(run, _text_rollout(run)) == TEXTS


def test_score_rewards_row_i_against_items_i_over_g_on_the_batch_device(mistral):
    run = _run(mistral)
    batch = _text_rollout(run)
    with FakeCuda():
        on_device = dataclasses.replace(batch, **{f.name: on_fake_cuda(getattr(batch, f.name))
                                                  for f in dataclasses.fields(batch)})
        rewards, texts = phases.score(run, on_device, ITEMS)
    assert isinstance(rewards, FakeCudaTensor) and rewards.dtype == torch.float32
    assert rewards.inner.tolist() == REWARDS
    assert texts == TEXTS


# ---- advantages ---------------------------------------------------------------------------------

def _ref_advantages(rewards, groups, teacher, estimator, mode, eps=1e-6):
    """float64, data/advantages.py's docstring written out: per row the group's mean and
    population std over its peers (in "baseline" mode the student rows of the group); 0 in a
    zero-variance group, except a baseline teacher row, which is then r - mean unscaled."""
    adv, flat = [], []
    for i, r in enumerate(rewards):
        peers = [rewards[j] for j in range(len(rewards))
                 if groups[j] == groups[i] and (mode == "group" or not teacher[j])]
        mean = sum(peers) / len(peers)
        std = math.sqrt(sum((x - mean) ** 2 for x in peers) / len(peers))
        flat.append(max(peers) == min(peers))
        baseline_teacher = mode == "baseline" and teacher[i]
        if flat[-1] and not baseline_teacher:
            adv.append(0.0)
        elif estimator == "dr_grpo" or std == 0:
            adv.append(r - mean)
        else:
            adv.append((r - mean) / (std + eps))
    return adv, flat


def _plain_batch(group_ids, width=6):
    """Rows of prompt length 1 and response lengths 1, 2, 3, 4, 1, ..."""
    n = len(group_ids)
    lengths = torch.tensor([1 + i % (width - 2) for i in range(n)])
    mask = torch.zeros(n, width, dtype=torch.bool)
    for i in range(n):
        mask[i, 1:1 + int(lengths[i])] = True
    return RolloutBatch(torch.zeros(n, width, dtype=torch.long), torch.ones(n, dtype=torch.long),
                        lengths, mask, torch.zeros(n, width), torch.tensor(group_ids))


def _check_advantages(rewards, groups, teacher, estimator, mode, drop):
    run = _run(None, f"advantage.estimator={estimator}", f"imitation.advantage={mode}",
               f"advantage.drop_zero_variance={str(drop).lower()}")
    batch = _plain_batch(groups)
    rows = torch.tensor(teacher) if any(teacher) else None
    adv, mask = phases.advantages(run, torch.tensor(rewards), batch, rows)
    want, flat = _ref_advantages(rewards, groups, teacher, estimator, mode)
    assert adv.dtype == torch.float32
    torch.testing.assert_close(adv.double(), torch.tensor(want, dtype=torch.float64),
                               rtol=1e-6, atol=1e-7)
    keep = [not t and not (drop and f) for t, f in zip(teacher, flat)]
    assert torch.equal(mask, batch.loss_mask & torch.tensor(keep)[:, None])
    return flat


@pytest.mark.parametrize("drop", [False, True])
@pytest.mark.parametrize("estimator", ["grpo", "dr_grpo"])
def test_advantages_are_group_normalised_and_zero_variance_groups_dropped_when_asked(estimator,
                                                                                       drop):
    assert set(ADVANTAGES) == {"grpo", "dr_grpo"}  # the reference knows every estimator
    # four groups of four, interleaved rows: 0 and 2 vary, 1 (all 1) and 3 (all 0) do not
    by_group = [[1.0, 0.0, 0.5, 0.25], [1.0] * 4, [0.0, 1.0, 0.0, 0.0], [0.0] * 4]
    groups = [i % 4 for i in range(16)]
    rewards = [by_group[g][i // 4] for i, g in enumerate(groups)]
    flat = _check_advantages(rewards, groups, [False] * 16, estimator, "group", drop)
    assert flat == [g in (1, 3) for g in groups]


@pytest.mark.parametrize("drop", [False, True])
@pytest.mark.parametrize("mode", ["group", "baseline"])
@pytest.mark.parametrize("estimator", ["grpo", "dr_grpo"])
def test_teacher_rows_take_the_imitation_advantage_and_leave_the_loss_mask(estimator, mode, drop):
    # per prompt 3 student rows then 1 teacher row: prompt 1's students all score 1 and its
    # teacher 0 (flat only without the teacher), prompt 2 is flat with it too
    per_prompt = [[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]]
    rewards = sum(per_prompt, [])
    groups = [i // 4 for i in range(12)]
    teacher = [i % 4 == 3 for i in range(12)]
    flat = _check_advantages(rewards, groups, teacher, estimator, mode, drop)
    students_flat = [flat[i] for i in range(12) if not teacher[i]]
    assert students_flat == [False] * 3 + [mode == "baseline"] * 3 + [True] * 3


# ---- selection ----------------------------------------------------------------------------------

TAU_ADV, TAU_ALIGN = 0.5, -0.25
RULES = {"paper": lambda a, al: True,
         "advantage": lambda a, al: abs(a) >= TAU_ADV,
         "alignment": lambda a, al: al >= TAU_ALIGN,
         "both": lambda a, al: abs(a) >= TAU_ADV and al >= TAU_ALIGN}
"""data/selection.py's docstring: which student sequences anchor their loss tokens."""
SEL_ADV = [1.0, -0.75, 0.25, -0.5]  # row 3: |A| == tau_adv
SEL_GAPS = [[0.25, 0.75], [-1.0, -1.0, -1.0], [0.0, -0.5], [-0.5]]  # means 0.5 -1 -0.25 -0.5;
# row 2: alignment == tau_align


def _logprob_rows(gaps, width, prompt=2):
    """lp_old, lp_T [b, width] with lp_T - lp_old = gaps[i] on row i's response tokens and a gap
    of 20 everywhere else (must not count); the response mask."""
    b = len(gaps)
    old, teacher = torch.full((b, width), -20.0), torch.zeros(b, width)
    mask = torch.zeros(b, width, dtype=torch.bool)
    for i, row in enumerate(gaps):
        for k, gap in enumerate(row):
            old[i, prompt + k] = -2.0 - 0.25 * k
            teacher[i, prompt + k] = old[i, prompt + k] + gap
            mask[i, prompt + k] = True
    return old, teacher, mask


def _train_batch(old, teacher_lp, loss_mask, rewards, advantages, teacher_rows=None):
    b, s = old.shape
    rollout = RolloutBatch(torch.zeros(b, s, dtype=torch.long), torch.full((b,), 2),
                           loss_mask.sum(-1), loss_mask, torch.zeros(b, s), torch.arange(b))
    return TrainBatch.from_rollout(rollout, rewards=torch.tensor(rewards),
                                   advantages=torch.tensor(advantages), old_logprobs=old,
                                   teacher_logprobs=teacher_lp, teacher_rows=teacher_rows)


def test_select_without_teacher_logprobs_returns_the_batch():
    old, _, mask = _logprob_rows(SEL_GAPS, 6)
    batch = _train_batch(old, None, mask, [0.0] * 4, SEL_ADV)
    assert phases.select(_run(), batch, mask) is batch


@pytest.mark.parametrize("policy", sorted(RULES))
def test_select_applies_each_policys_rule_to_the_student_rows(policy):
    assert set(SELECTION_POLICIES) == set(RULES)  # selection.policy offers no other choice
    old, teacher_lp, mask = _logprob_rows(SEL_GAPS, 6)
    batch = _train_batch(old, teacher_lp, mask, [0.0] * 4, SEL_ADV)
    run = _run(None, f"selection.policy={policy}", f"selection.tau_adv={TAU_ADV}",
               f"selection.tau_align={TAU_ALIGN}")
    out = phases.select(run, batch, mask)
    align = [sum(row) / len(row) for row in SEL_GAPS]
    gate = [RULES[policy](a, al) for a, al in zip(SEL_ADV, align)]
    assert [RULES[p](a, al) for p in sorted(RULES) for a, al in zip(SEL_ADV, align)] == [
        True, True, False, True,  True, False, True, False,    # advantage, alignment
        True, False, False, False,  True, True, True, True]   # both, paper
    assert torch.equal(out.teacher_mask, mask & torch.tensor(gate)[:, None])
    assert out.seq_alignment.tolist() == align
    assert out.selected_frac == sum(len(r) for r, g in zip(SEL_GAPS, gate) if g) / int(mask.sum())
    assert out.advantages is batch.advantages and out.distill_mask is None


# With teacher trajectories: per prompt 2 student rows then 1 teacher row. Each prompt: its
# students' rewards, its teacher's reward, advantage and per-token gaps lp_T - lp_S.
PROMPTS = [((0.0, 0.0), 1.0, 1.0, [1.0, 1.0]),       # passes every gate (gap == tau_align)
           ((0.0, 0.0), 1.0, 0.8, [1.5, 2.0, 1.0]),  # gap 1.5 > tau_align 1.0
           ((0.0, 0.0), 0.0, 0.05, [0.25]),          # A 0.05 < tau_adv 0.1
           ((1.0, 0.0), 1.0, 0.5, [-0.5, 0.0]),      # success 0.5, not < tau_success 0.5
           ((0.0, 0.0), 0.0, -0.25, [3.0]),          # gap and advantage
           ((0.0, 0.5), 1.0, 0.3, [2.0, 0.5])]       # gap 1.25 (reward 0.5 is no success)
FAILS = {1: {"aligned"}, 2: {"raises_reward"}, 3: {"not_exploring"},
         4: {"aligned", "raises_reward"}, 5: {"aligned"}}
"""By hand, under ImitationConfig's defaults: the gates each teacher row fails."""
STUDENT_GAPS = [[0.5, -0.5], [0.25, 0.25, 0.25]]


def _teacher_row_batch():
    gaps, rewards, advantages, teacher = [], [], [], []
    for students, r_t, a_t, gap in PROMPTS:
        gaps += STUDENT_GAPS + [gap]
        rewards += [*students, r_t]
        advantages += [0.5, -0.5, a_t]
        teacher += [False, False, True]
    old, teacher_lp, response = _logprob_rows(gaps, 6)
    rows = torch.tensor(teacher)
    batch = _train_batch(old, teacher_lp, response & ~rows[:, None], rewards, advantages, rows)
    return dataclasses.replace(batch, group_ids=torch.arange(len(teacher)) // 3), response


def _ref_gates(im):
    """ImitationConfig's three gates written out, per prompt."""
    out = []
    for students, _, a_t, gap in PROMPTS:
        success = sum(r >= im.success_reward for r in students) / len(students)
        out.append({"aligned": sum(gap) / len(gap) <= im.tau_align,
                    "raises_reward": a_t >= im.tau_adv,
                    "not_exploring": success < im.tau_success})
    return out


@pytest.mark.parametrize("on", list(itertools.product([True, False], repeat=3)))
def test_select_gates_teacher_rows_and_distills_the_selected_ones(on):
    flags = dict(zip(["gate_aligned", "gate_advantage", "gate_explore"], on))
    run = _run(None, *[f"imitation.{k}={str(v).lower()}" for k, v in flags.items()])
    batch, response = _teacher_row_batch()
    out = phases.select(run, batch, response)
    gates = _ref_gates(run.cfg.imitation)
    assert [{g for g, ok in p.items() if not ok} for p in gates] == [FAILS.get(p, set())
                                                                    for p in range(6)]
    off = {g for g, flag in zip(["aligned", "raises_reward", "not_exploring"], on) if not flag}
    selected = [FAILS.get(p, set()) <= off for p in range(6)]
    teacher = batch.teacher_rows
    for name in gates[0]:
        want = [name in off or p[name] for p in gates]
        assert out.gates.passed[name][teacher].tolist() == want, name
        assert not out.gates.passed[name][~teacher].any(), name
    assert out.gates.selected[teacher].tolist() == selected
    assert not out.gates.selected[~teacher].any()
    assert torch.equal(out.distill_mask, response & out.gates.selected[:, None])
    # the paper's teacher mask (policy "paper"): every student loss token, no teacher row's
    assert torch.equal(out.teacher_mask, response & ~teacher[:, None])


def test_imitation_metrics_of_a_hand_built_batch():
    batch, response = _teacher_row_batch()
    got = phases.imitation_metrics(_run(), phases.select(_run(), batch, response))
    want = {"imitation/pass_aligned": 3 / 6, "imitation/pass_raises_reward": 4 / 6,
            "imitation/pass_not_exploring": 5 / 6, "imitation/pass_selected": 1 / 6,
            "imitation/teacher_reward": 4 / 6,
            "imitation/teacher_advantage": (1.0 + 0.8 + 0.05 + 0.5 - 0.25 + 0.3) / 6,
            "imitation/alignment_mean": (1.0 + 1.5 + 0.25 - 0.25 + 3.0 + 1.25) / 6}
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-6), key


def test_pp_broadcast_is_the_identity_on_one_stage():
    value = torch.randn(3, 5)
    assert phases.pp_broadcast(_run(), value, (3, 5)) is value
