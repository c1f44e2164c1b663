"""The end-of-run figure from a synthetic metrics.jsonl: a readable PNG, with or without eval
keys."""

import math

import pytest

from rlad_megatron.bookkeeping.metrics import open_metrics
from rlad_megatron.bookkeeping.plots import accuracy_panel, ema, plot_run, series

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _write_run(run_dir, *, with_eval: bool, steps: int = 30):
    with open_metrics(run_dir, enabled=True, tensorboard=False) as m:
        for s in range(steps):
            m.log(s, {"rollout/reward_mean": min(1.0, 0.1 + 0.03 * s) + (0.05 if s % 2 else -0.05),
                      "loss/trrd": 1.0 / (s + 1)})
            if with_eval and s % 10 == 0:
                m.log(s, {"eval/accuracy": 0.2 + 0.01 * s, "eval/pass_at_k": 0.4 + 0.01 * s,
                          "eval_teacher/accuracy": 0.8})


def _check_png(path):
    import matplotlib.image

    assert path.read_bytes()[:8] == PNG_SIGNATURE
    pixels = matplotlib.image.imread(path)
    assert pixels.shape[0] >= 200 and pixels.shape[1] >= 400
    assert pixels[..., :3].std() > 0.01  # something was drawn, not a blank canvas


def test_plot_run_writes_a_png_with_reward_and_accuracy(tmp_path):
    _write_run(tmp_path, with_eval=True)
    out = plot_run(tmp_path)
    assert out == tmp_path / "curves.png"
    _check_png(out)


def test_plot_run_without_eval_keys_or_data(tmp_path):
    _write_run(tmp_path / "a", with_eval=False)
    _check_png(plot_run(tmp_path / "a"))

    (tmp_path / "b").mkdir()  # no metrics.jsonl at all: two "no data" panels
    _check_png(plot_run(tmp_path / "b", tmp_path / "b" / "empty.png", title="empty"))


def test_plot_run_from_a_jsonl_path_and_custom_keys(tmp_path):
    _write_run(tmp_path, with_eval=False)
    out = plot_run(tmp_path / "metrics.jsonl", tmp_path / "figs" / "loss.png",
                   reward_keys=("loss/trrd",), accuracy_keys=(), teacher_key=None, smoothing=0.0)
    assert out == tmp_path / "figs" / "loss.png"
    _check_png(out)


def test_accuracy_panel_says_no_data_when_keys_are_absent():
    from matplotlib.figure import Figure

    ax = Figure().subplots()
    accuracy_panel(ax, [{"step": 0, "rollout/reward_mean": 1.0}], ("eval/accuracy",),
                    "eval_teacher/accuracy")
    assert any("no data" in t.get_text() for t in ax.texts)
    assert not ax.lines


def test_series_skips_non_finite_and_keeps_the_last_duplicate():
    records = [{"step": 2, "k": 1.0}, {"step": 0, "k": float("nan")}, {"step": 1, "k": 3.0},
               {"step": 2, "k": 5.0}, {"step": 3, "other": 1.0}]
    assert series(records, "k") == ([1, 2], [3.0, 5.0])


def test_ema_is_debiased():
    assert ema([1.0, 2.0, 3.0], 0.0) == [1.0, 2.0, 3.0]
    assert ema([4.0] * 5, 0.9) == pytest.approx([4.0] * 5)
    smoothed = ema([0.0, 10.0], 0.5)
    assert smoothed[0] == 0.0 and math.isclose(smoothed[1], 5.0 / 0.75)
