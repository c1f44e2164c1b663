"""Evaluation: the generation settings the evaluator passes are the eval.* of the config (the
paper's protocol by default), rows are numbered so that every layout and every run draw the same
noise for a prompt, and the metrics match hand-computed mean@k, pass@k, per-level and
step-checked values.

The model is replaced by a stand-in `generate` that answers from the gold solutions (its
settings are what is checked); tokenizer, format, reward and splits are the real ones.
A failure means a table's label does not describe what was measured, or arms are not compared on
the same draws.
"""

import types

import pytest
import torch

from rlad_megatron.data.batch import RolloutBatch
from rlad_megatron.data.formats import get_format
from rlad_megatron.data.rewards import get_reward
from rlad_megatron.data.tasks import reasoning_gym_splits
from rlad_megatron.data.tokenizer import load_tokenizer
from rlad_megatron.data.tokenizer_train import train_sentencepiece
from rlad_megatron.train import evaluate as ev
from rlad_megatron.config.run import RunConfig


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    splits = reasoning_gym_splits("chain_sum", train_size=0, heldout_size=12, levels=[3, 4],
                                  config={"min_digits": 1, "max_digits": 1})
    fmt = get_format("compact", check_steps=False)
    prefix = tmp_path_factory.mktemp("tok") / "chars"
    train_sentencepiece([fmt.prompt(i) + fmt.solution(i) for i in splits.heldout] + ["0123456789"],
                        prefix)
    return splits, fmt, load_tokenizer(str(prefix) + ".model")


def _run(setting, dp=1, dp_rank=0, **eval_over):
    splits, fmt, tok = setting
    cfg = RunConfig()
    for k, v in eval_over.items():
        setattr(cfg.eval, k, v)
    par = types.SimpleNamespace(dp=dp, dp_rank=dp_rank, dp_group=None)
    return types.SimpleNamespace(cfg=cfg, par=par, tokenizer=tok, fmt=fmt, splits=splits,
                                 reward_fn=get_reward("reasoning_gym"))


class _Model(dict):
    """The fake generate's model: its tokenizer and texts, on a single-rank layout (evaluate()
    splits the prompts over the evaluated model's own data-parallel ranks)."""

    par = types.SimpleNamespace(dp=1, dp_rank=0, dp_group=None)


def _fake_generate(calls, answer):
    """Records (config, seed, row_offset); row j of prompt p answers answer(p_item_text, j)."""
    def generate(model, prompts, gen, *, seed, row_offset):
        calls.append((gen, seed, row_offset, len(prompts)))
        tok = model["tok"]
        rows = []
        for p, ids in enumerate(prompts):
            for j in range(gen.samples_per_prompt):
                rows.append((ids, tok.encode(answer(model["texts"][p], j)) + [tok.eos_id]))
        s = max(len(a) + len(b) for a, b in rows)
        tokens = torch.zeros(len(rows), s, dtype=torch.long)
        for r, (a, b) in enumerate(rows):
            tokens[r, :len(a) + len(b)] = torch.tensor(a + b)
        p_len = torch.tensor([len(a) for a, _ in rows])
        r_len = torch.tensor([len(b) for _, b in rows])
        mask = torch.zeros(len(rows), s, dtype=torch.bool)
        for r in range(len(rows)):
            mask[r, p_len[r]:p_len[r] + r_len[r]] = True
        return RolloutBatch(tokens, p_len, r_len, mask, torch.zeros(len(rows), s),
                            torch.arange(len(rows)) // gen.samples_per_prompt)
    return generate


def test_default_protocol_is_the_papers_and_is_passed_to_generation(setting, monkeypatch):
    calls = []
    splits, fmt, tok = setting
    items = splits.heldout[:6]
    monkeypatch.setattr(ev, "generate", _fake_generate(calls, lambda i, j: fmt.solution(i)))
    run = _run(setting)
    assert ev.protocol_label(run.cfg.eval) == "mean@4 (T=0.6, top-p 0.95)"
    model = _Model(tok=tok, texts=items)
    metrics, _, records = ev.evaluate(run, model, items)
    gen, seed, offset, n = calls[0]
    assert (gen.temperature, gen.top_p, gen.top_k, gen.samples_per_prompt) == (0.6, 0.95, 0, 4)
    assert gen.temperature > 0 and gen.max_new_tokens == run.cfg.rollout.max_new_tokens
    assert seed == 2**31 - 1 - run.cfg.eval.seed and offset == 0 and n == 6
    assert metrics["eval/accuracy"] == 1.0 and metrics["eval/pass_at_4"] == 1.0
    assert metrics["eval/accuracy_steps"] == 1.0 and len(records) == 6
    # greedy is still an option, and labelled as such
    greedy = _run(setting, temperature=0.0, k=1, max_new_tokens=7)
    calls.clear()
    ev.evaluate(greedy, model, items)
    assert calls[0][0].temperature == 0 and calls[0][0].samples_per_prompt == 1
    assert calls[0][0].max_new_tokens == 7
    assert ev.protocol_label(greedy.cfg.eval) == "greedy (mean@1)"


def test_row_ids_are_global_whatever_the_layout_and_run_seed(setting, monkeypatch):
    splits, fmt, tok = setting
    items = splits.heldout[:5]
    # DP ranks take contiguous slices that tile the prompts, so global row = prompt * k + sample
    for dp in (1, 2, 3, 4):
        slices = [ev.rank_slice(5, dp, r) for r in range(dp)]
        assert [i for a, b in slices for i in range(a, b)] == list(range(5))
    assert [ev.rank_slice(5, 2, r) for r in range(2)] == [(0, 3), (3, 5)]
    calls = []
    monkeypatch.setattr(ev, "generate", _fake_generate(calls, lambda i, j: "#0"))
    for seed in (1, 2):
        run = _run(setting)
        run.cfg.seed = seed  # the run's seed never enters the evaluation's noise
        ev.evaluate(run, _Model(tok=tok, texts=items), items)
    assert [(c[1], c[2]) for c in calls] == [(2**31 - 1, 0)] * 2
    run = _run(setting, seed=5)
    ev.evaluate(run, _Model(tok=tok, texts=items), items)
    assert calls[-1][1] == 2**31 - 1 - 5


def test_metrics_by_hand(setting, monkeypatch):
    splits, fmt, tok = setting
    items = splits.heldout[:4]  # levels 3, 4, 3, 4
    wrong_chain = lambda i: "1+1=2#" + i.answer  # noqa: E731  right answer, wrong steps

    def answer(item, j):
        p = items.index(item)
        if p == 0:
            return fmt.solution(item)                        # 4/4 right, steps right
        if p == 1:
            return wrong_chain(item) if j < 2 else "#999"    # 2/4 right (lucky), steps 0
        if p == 2:
            return fmt.solution(item) if j == 0 else "#999"  # 1/4 right, steps 1
        return "#999"                                        # 0/4

    monkeypatch.setattr(ev, "generate", _fake_generate([], answer))
    metrics, _, records = ev.evaluate(_run(setting), _Model(tok=tok, texts=items), items)
    assert [r["correct"] for r in records] == [4, 2, 1, 0]
    assert [r["steps_correct"] for r in records] == [4, 0, 1, 0]
    assert metrics["eval/accuracy"] == pytest.approx(7 / 16)
    assert metrics["eval/pass_at_4"] == pytest.approx(3 / 4)
    assert metrics["eval/accuracy_steps"] == pytest.approx(5 / 16)
    assert metrics["eval/L3/accuracy"] == pytest.approx(5 / 8)    # prompts 0 and 2
    assert metrics["eval/L4/accuracy"] == pytest.approx(2 / 8)    # prompts 1 and 3
    means = [1.0, 0.5, 0.25, 0.0]
    mean = sum(means) / 4
    sd = (sum((m - mean) ** 2 for m in means) / 3) ** 0.5
    assert metrics["eval/accuracy_se"] == pytest.approx(sd / 2)
