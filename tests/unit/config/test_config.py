"""Run configuration: YAML + dotted overrides, and the one validator's messages.

A failure means a bad value would reach the trainer (or an error would not name its key)."""

import subprocess
import sys

import re

import pytest

from rlad_megatron.config.run import load_config, to_yaml
from rlad_megatron.config.validate import validate_run_config


def _write(tmp_path, text):
    p = tmp_path / "run.yaml"
    p.write_text(text)
    return str(p)


def _valid(tmp_path, **over):
    tok = tmp_path / "tok.model"
    tok.write_bytes(b"x")
    cfg = load_config(None, ["student.preset=tiny-llama", "student.random_init=true",
                             f"student.tokenizer={tok}", "teacher.preset=tiny-llama",
                             "teacher.random_init=true", f"teacher.tokenizer={tok}",
                             "rollout.prompts_per_step=4", "rollout.group_size=4",
                             "train.micro_batch_size=2"] + [f"{k}={v}" for k, v in over.items()])
    return cfg


def test_yaml_and_overrides_merge_with_typed_defaults(tmp_path):
    path = _write(tmp_path, "algorithm: grpo\nrollout:\n  group_size: 4\n"
                            "loss:\n  trrd:\n    alpha: 0.3\n")
    cfg = load_config(path, ["rollout.group_size=6", "parallel.tensor=2",
                             "loss.trrd.clamp_grad=straight_through"])
    assert cfg.algorithm == "grpo" and cfg.rollout.group_size == 6 and cfg.parallel.tensor == 2
    assert cfg.loss.trrd.alpha == 0.3 and cfg.loss.trrd.clamp_grad == "straight_through"
    assert cfg.rollout.temperature == 1.0  # default kept
    again = load_config(_write(tmp_path, to_yaml(cfg)))
    assert again == cfg


@pytest.mark.parametrize("text,override,message", [
    ("rollout:\n  group_sise: 4\n", [], r"key rollout.group_sise"),
    ("", ["train.steps=ten"], r"key train.steps"),
    ("", ["optimizer"], r"override 'optimizer' is not of the form key=value"),
])
def test_unknown_keys_and_wrong_types_name_the_key(tmp_path, text, override, message):
    with pytest.raises(ValueError, match=message):
        load_config(_write(tmp_path, text), override)


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml does not exist"):
        load_config(str(tmp_path / "nope.yaml"))


@pytest.mark.parametrize("over,world,message", [
    ({"algorithm": "ppo"}, 1, r"algorithm: 'ppo' is not one of rlad, grpo, kdrl, sft_distill, sft"),
    ({"rollout.group_size": 1}, 1, r"rollout.group_size: 1 must be >= 2 for rlad"),
    ({"parallel.tensor": 3}, 2,
     r"parallel.tensor \* parallel.pipeline = 3 \* 1 = 3 does not divide the world size 2"),
    ({"train.micro_batch_size": 3}, 1, r"per data-parallel rank = 16 is not divisible by "
                                       r"train.micro_batch_size \* train.mini_batches = 3 \* 1"),
    ({"rollout.prompts_per_step": 3}, 2,
     r"rollout.prompts_per_step = 3 is not divisible by the data-parallel size 2"),
    ({"selection.policy": "sometimes"}, 1, r"selection.policy: 'sometimes' is not one of paper"),
    ({"loss.trrd.alpha": 1.5}, 1, r"loss.trrd.alpha: 1.5 is outside \[0, 1\]"),
    ({"rollout.top_p": 0}, 1, r"rollout.top_p must be in \(0, 1\]"),
    ({"optimizer.distributed": True}, 1,
     r"optimizer.distributed: megatron-core's distributed optimizer"),
    ({"optimizer.name": "lamb"}, 1, r"optimizer.name: 'lamb' is not one of adam, sgd"),
    ({"optimizer.name": "sgd", "optimizer.adam_beta2": 0.95}, 1,
     r"optimizer.adam_beta2: 0.95 would be ignored: it takes effect only with "
     r"optimizer.name=adam"),
    ({"optimizer.sgd_momentum": 0.9}, 1,
     r"optimizer.sgd_momentum: 0.9 would be ignored: it takes effect only with "
     r"optimizer.name=sgd"),
    ({"optimizer.name": "sgd", "optimizer.sgd_momentum": 1.0}, 1,
     r"optimizer.sgd_momentum must be in \[0, 1\), got 1.0"),
    ({"teacher.random_init": False}, 1, r"teacher.checkpoint is not set"),
    ({"student.tokenizer": "/nonexistent/tok.model"}, 1,
     r"student.tokenizer: /nonexistent/tok.model does not exist"),
    ({"eval.k": 4, "eval.temperature": 0.0}, 1,
     r"eval.k: 4 samples per prompt need eval.temperature > 0"),
    ({"eval.split": "validation"}, 1, r"eval.split: validation needs data.validation_size"),
    ({"data.levels": [3, 3]}, 1, r"data.levels: \[3, 3\] repeats a level"),
    ({"data.levels": [3, 4], "data.heldout_size": 5}, 1,
     r"data.heldout_size = 5 is not divisible by the 2 data.levels"),
    ({"data.levels": [3], "data.task_config": {"min_terms": 2}}, 1,
     r"data.task_config sets \['min_terms'\]"),
    ({"data.format": "compact", "data.task": "countdown"}, 1,
     r"data.format: compact renders reasoning-gym tasks"),
    ({"eval.top_p": 0.0}, 1, r"eval.top_p must be in \(0, 1\]"),
    ({"data.task_config": {"bogus": 1}}, 1,
     r"data.task_config \{'bogus': 1\} for reasoning-gym task 'chain_sum'"),
    ({"data.task": "no_such_task"}, 1, r"data.task: 'no_such_task' is not a reasoning-gym task"),
    ({"loss.trrd.eps_low": -0.5}, 1, r"loss.trrd.eps_low: -0.5 must be in \[0, 1\)"),
    ({"algorithm": "grpo", "loss.grpo.eps_high": -0.1}, 1,
     r"loss.grpo.eps_high: -0.1 must be >= 0"),
    ({"loss.trrd.kl_beta": -0.1}, 1, r"loss.trrd.kl_beta: -0.1 must be >= 0"),
    ({"loss.trrd.kl_beta": 0.1, "loss.trrd.kl_estimator": "k7"}, 1,
     r"loss.trrd.kl_estimator: 'k7' is not one of k1, k2, k3"),
    ({"loss.grpo.kl_estimator": "k7"}, 1, r"loss.grpo.kl_estimator: 'k7' is not one of"),
    ({"algorithm": "grpo", "teacher.preset": "null", "rollout.teacher_samples": 2}, 1,
     r"rollout.teacher_samples: 2 needs a teacher to generate the trajectories"),
    ({"algorithm": "kdrl", "rollout.teacher_samples": 2}, 1,
     r"rollout.teacher_samples: 2 teacher trajectories join the RL loss of algorithm rlad or "
     r"grpo, not kdrl"),
    ({"rollout.teacher_samples": -1}, 1, r"rollout.teacher_samples must be >= 0, got -1"),
    ({"rollout.teacher_samples": 2, "imitation.weight": -0.5}, 1,
     r"imitation.weight \(lambda\) must be >= 0, got -0.5"),
    ({"rollout.teacher_samples": 2, "imitation.weight_end": -1.0}, 1,
     r"imitation.weight_end \(lambda at the end\) must be"),
    ({"rollout.teacher_samples": 2, "imitation.tau_success": 0.0}, 1,
     r"imitation.tau_success must be in \(0, 1\]"),
    ({"rollout.teacher_samples": 2, "imitation.distill_loss": "ratio",
      "imitation.importance_cap": 0.0}, 1, r"imitation.importance_cap must be > 0"),
    ({"imitation.distill_loss": "kl"}, 1, r"imitation.distill_loss: 'kl' is not one of ratio"),
    ({"imitation.advantage": "mean"}, 1, r"imitation.advantage: 'mean' is not one of group"),
    ({"rollout.teacher_samples": 1, "train.micro_batch_size": 8}, 1,
     r"rollout.prompts_per_step \* \(rollout.group_size \+ rollout.teacher_samples\) per "
     r"data-parallel rank = 20 is not divisible by train.micro_batch_size \* "
     r"train.mini_batches = 8 \* 1"),
    ({"loss.trrd.dual_clip": 0.5}, 1, r"loss.trrd.dual_clip: 0.5 must be > 1"),
    ({"loss.kdrl.agg": "mean"}, 1, r"loss.kdrl.agg: 'mean' is not one of"),
    ({"loss.kdrl.kl_estimator": "k9"}, 1, r"loss.kdrl.kl_estimator: 'k9' is not one of"),
    ({"loss.trrd.teacher_logratio_clamp": 0.0}, 1, r"teacher_logratio_clamp: 0.0 must be > 0"),
    ({"algorithm": "kdrl", "loss.kdrl.beta_min": 0.1}, 1,
     r"loss.kdrl.beta_min: 0.1 must be in \[0"),
    ({"data.source": "/no/such.jsonl"}, 1, r"data.source: /no/such.jsonl is neither"),
    ({"teacher.offload": "disk"}, 1, r"teacher.offload: 'disk' is not one of none, stream"),
    ({"teacher.offload": "stream", "teacher.stream_window": 0}, 1,
     r"teacher.stream_window must be >= 1, got 0"),
    ({"teacher.stream_activations": "nvme"}, 1, r"teacher.stream_activations: 'nvme' is not"),
    ({"teacher.offload": "stream", "rollout.teacher_samples": 2, "eval.teacher": False,
      "train.micro_batch_size": 4}, 1,
     r"teacher.offload=stream: rollout.teacher_samples=2 generates with the teacher"),
    ({"teacher.offload": "stream"}, 1,
     r"teacher.offload=stream: eval.teacher=true evaluates the teacher by generation"),
    ({"teacher.offload": "stream", "algorithm": "sft_distill"}, 1,
     r"teacher.offload=stream: algorithm sft_distill generates its traces"),
    ({"train.max_tokens_per_micro_batch": -1}, 1,
     r"train.max_tokens_per_micro_batch must be >= 0"),
    ({"train.max_tokens_per_micro_batch": 256, "parallel.pipeline": 2,
      "parallel.virtual_pipeline": 2}, 2,
     r"train.max_tokens_per_micro_batch is not supported with parallel.virtual_pipeline"),
    ({"teacher.score_during_rollout": True, "rollout.engine": "static"}, 1,
     r"teacher.score_during_rollout needs rollout.micro_batch_size > 0"),
    ({"teacher.score_during_rollout": True, "rollout.micro_batch_size": 4,
      "teacher.offload": "stream", "eval.teacher": False}, 1,
     r"teacher.score_during_rollout: a streamed teacher"),
    ({"teacher.score_during_rollout": True, "rollout.micro_batch_size": 4,
      "rollout.teacher_samples": 4}, 1,
     r"teacher.score_during_rollout with rollout.teacher_samples > 0 is not supported"),
    ({"teacher.score_during_rollout": True, "rollout.micro_batch_size": 4,
      "algorithm": "grpo"}, 1, r"teacher.score_during_rollout: algorithm grpo has no teacher"),
    ({"rollout.engine": "paged"}, 1, r"rollout.engine: 'paged' is not one of static, continuous"),
    ({"rollout.engine": "continuous", "rollout.kv_block_size": 0}, 1,
     r"rollout.kv_block_size must be >= 1, got 0"),
    ({"rollout.max_live_rows": 8, "rollout.engine": "static"}, 1,
     r"rollout.max_live_rows.*takes effect only with rollout.engine=continuous"),
    ({"rollout.stop_check_every": 4}, 1,
     r"rollout.stop_check_every.*takes effect only with rollout.engine=static"),
])
def test_validate_names_the_key_and_values(tmp_path, over, world, message):
    cfg = _valid(tmp_path, **over)
    with pytest.raises(ValueError, match=message):
        validate_run_config(cfg, world)


def test_a_valid_config_passes(tmp_path):
    validate_run_config(_valid(tmp_path), 1)
    validate_run_config(_valid(tmp_path, **{"algorithm": "grpo", "rollout.teacher_samples": 2,
                        "loss.grpo.kl_beta": 0.05}), 1)
    validate_run_config(_valid(tmp_path, **{"rollout.engine": "continuous",
                                            "rollout.max_live_rows": 8,
                                            "teacher.score_during_rollout": True}), 1)
    validate_run_config(_valid(tmp_path, **{"parallel.pipeline": 2,  # the default engine
                                            "parallel.virtual_pipeline": 2}), 2)
    validate_run_config(_valid(tmp_path, **{"algorithm": "grpo", "teacher.random_init": False}), 2)


def test_cli_reports_config_errors_before_any_work(tmp_path):
    path = _write(tmp_path, "rollout:\n  group_sise: 4\n")
    out = subprocess.run([sys.executable, "-m", "rlad_megatron.cli", "train", path],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "rollout.group_sise" in out.stderr and "Traceback" not in out.stderr


def test_unwritable_run_dir_or_checkpoint_dir_is_named_before_any_model(tmp_path):
    """An unusable run_dir or checkpoint.dir is named at setup, not at the first save."""
    from rlad_megatron.train.setup import check_writable

    a_file = tmp_path / "file.txt"
    a_file.write_text("user data")
    with pytest.raises(ValueError, match=r"checkpoint.dir: .*file.txt is not a writable folder"):
        check_writable(a_file, "checkpoint.dir")
    with pytest.raises(ValueError, match=r"run_dir: .*file.txt/sub is not a writable folder"):
        check_writable(a_file / "sub", "run_dir")
    assert a_file.read_text() == "user data"
    check_writable(tmp_path / "new" / "ckpt", "checkpoint.dir")
    assert (tmp_path / "new" / "ckpt").is_dir() and not list((tmp_path / "new" / "ckpt").iterdir())


def test_token_budget_replaces_the_micro_batch_divisibility_check(tmp_path):
    """With train.max_tokens_per_micro_batch the micro-batches come from the budget:
    micro_batch_size need not divide the rank's rows, the mini-batches still must."""
    validate_run_config(_valid(tmp_path, **{"train.micro_batch_size": 3,
                        "train.max_tokens_per_micro_batch": 128}), 1)
    with pytest.raises(ValueError, match=r"= 16 is not divisible by train.mini_batches = 3"):
        validate_run_config(_valid(tmp_path, **{"train.mini_batches": 3,
                            "train.max_tokens_per_micro_batch": 128}), 1)


def test_sft_paths_ignore_mini_batches_in_the_divisibility_check(tmp_path):
    """sft_distill with train.mini_batches=2 is accepted (the SFT path takes one optimizer step
    per batch); RL keeps the check."""
    validate_run_config(_valid(tmp_path, **{"algorithm": "sft_distill", "train.mini_batches": 2,
                        "train.sft_batch_size": 8, "train.micro_batch_size": 8}), 1)
    with pytest.raises(ValueError, match=r"train.sft_batch_size per data-parallel rank = 8 is "
                                         r"not divisible by train.micro_batch_size = 3"):
        validate_run_config(_valid(tmp_path, **{"algorithm": "sft", "train.sft_batch_size": 8,
                            "train.micro_batch_size": 3}), 1)
    with pytest.raises(ValueError, match=r"train.micro_batch_size \* train.mini_batches = 2 \* 3"):
        validate_run_config(_valid(tmp_path, **{"algorithm": "grpo", "train.mini_batches": 3}), 1)


@pytest.mark.parametrize("text, message", [
    ("algorithm: [grpo\n", r"bad.yaml: not valid YAML"),
    ("- algorithm: grpo\n", r"bad.yaml: the top level must be a mapping"),
    ("student: {preset: tiny-llama, spec: {num_layerz: 2}}\n",
     r"student.spec: unknown field\(s\) num_layerz; known: "),
])
def test_cli_names_the_file_or_field_instead_of_a_traceback(tmp_path, capsys, text, message):
    """Malformed YAML, a YAML list as config and an unknown spec field with a preset are each a
    named error with exit status 2 before any work, not a traceback."""
    from rlad_megatron.cli import main

    path = tmp_path / "bad.yaml"
    path.write_text(text)
    tok = tmp_path / "tok.model"
    tok.write_bytes(b"x")
    assert main(["train", str(path), f"student.tokenizer={tok}", "student.random_init=true",
                 "algorithm=grpo"]) == 2
    assert re.search(message, capsys.readouterr().err)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(text if "spec" not in text else "base: {}\n")
    if "spec" not in text:
        assert main(["prepare", str(recipe)]) == 2
        assert re.search(message.replace("bad.yaml", "recipe.yaml"), capsys.readouterr().err)


def test_empty_evaluation_split_is_named_and_drops_are_counted(tmp_path, capsys):
    """An empty held-out split is named with the setting that sizes it (not "prompts: empty
    batch"), and dropped rows are counted."""
    from rlad_megatron.data.tasks import file_splits
    from rlad_megatron.train.setup import check_splits

    data = tmp_path / "qa.jsonl"
    data.write_text('{"question": "1+1", "answer": "2"}\n{"question": "1+1", "answer": "2"}\n'
                    'not json\n{"question": "2+2", "answer": "4"}\n')
    cfg = _valid(tmp_path, **{"data.source": str(data), "data.heldout_fraction": 0.0,
                              "data.on_bad_row": "skip"})
    splits = file_splits(data, heldout_fraction=0.0, on_bad_row="skip")
    with pytest.raises(ValueError, match=r"eval.split: the heldout split of .*qa.jsonl is empty "
                                         r"\(see data.heldout_fraction\)"):
        check_splits(cfg, splits)
    assert "2 train, 0 validation, 0 held-out prompts; dropped 1 duplicate(s), 1 bad row(s)" \
        in capsys.readouterr().out


def test_old_logprobs_reuse_is_refused_where_the_update_is_not_on_policy(tmp_path):
    """train.old_logprobs (config/on_policy.py): auto skips the old-policy pass only for a
    one-mini-batch update whose selection does not read lp_old; reuse is refused elsewhere,
    naming what blocks it; an unknown mode is refused by its choices."""
    from rlad_megatron.config.on_policy import reuses_update_forward

    assert reuses_update_forward(_valid(tmp_path))
    assert not reuses_update_forward(_valid(tmp_path, **{"train.old_logprobs": "pass"}))
    assert not reuses_update_forward(_valid(tmp_path, **{"train.mini_batches": 2}))
    assert not reuses_update_forward(_valid(tmp_path, **{"selection.policy": "alignment"}))
    assert not reuses_update_forward(_valid(tmp_path, algorithm="sft"))
    assert reuses_update_forward(_valid(tmp_path, algorithm="grpo",
                                        **{"selection.policy": "alignment"}))
    validate_run_config(_valid(tmp_path, **{"train.old_logprobs": "reuse"}), 1)
    for over, message in [({"train.mini_batches": 2}, r"reuse needs an on-policy update, but "
                           r"train.mini_batches = 2"),
                          ({"selection.policy": "both"}, r"selection.policy = both"),
                          ({"rollout.teacher_samples": 2}, r"rollout.teacher_samples = 2"),
                          ({"algorithm": "sft"}, r"reuse is an RL setting")]:
        with pytest.raises(ValueError, match=message):
            validate_run_config(_valid(tmp_path, **{"train.old_logprobs": "reuse", **over}), 1)
    with pytest.raises(ValueError, match=r"train.old_logprobs: 'always' is not one of auto, pass"):
        validate_run_config(_valid(tmp_path, **{"train.old_logprobs": "always"}), 1)
