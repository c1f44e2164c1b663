"""`rlad plan`: per-GPU memory checked against hand computations, layout rules and refusals.

Each expected number below is written out from the formulas of launch/memory.py's docstring
with the published architecture values, not computed by the planner's own helpers. A failure
means the planner would accept a layout that runs out of memory (or refuse one that fits), or
submit a layout megatron cannot build.
"""

import dataclasses
import json
from pathlib import Path

import pytest

from distributed_helpers import single_process_group
from rlad_megatron.cli import main as rlad_main
from rlad_megatron.launch.memory import (GIB, Workload, estimate, layer_parameters,
                                         stage_parameters)
from rlad_megatron.launch.plan import build_request, load_model_spec, plan
from rlad_megatron.launch.plan_report import format_plan
from rlad_megatron.launch.step_time import Hardware, estimate_step
from rlad_megatron.models.spec import get_preset
from rlad_megatron.config.validate import validate_run_config

REPO = Path(__file__).resolve().parents[3]
RECIPES = {"qwen3_8b_to_1.7b": (1, (2, 1, 4)), "qwen3_32b_to_8b": (4, (4, 1, 8)),
           "llama31_405b_to_8b": (8, (8, 2, 4)), "llama31_405b_to_8b_1node": (1, (4, 1, 2)),
           "llama31_405b_to_8b_2node": (2, (8, 1, 2)), "llama31_70b_to_8b": (1, (2, 1, 4))}
"""recipe -> (nodes, its configured (TP, PP, DP) on 8-GPU nodes)."""


def test_405b_teacher_weights_at_tp8_pp2_by_hand():
    # Llama-3.1-405B: h=16384, ffn=53248, 128 heads, 8 query groups, head_dim 128, 126 layers,
    # vocab 128256 (untied). One TP rank of the last of 2 pipeline stages holds:
    h, f, q, kv = 16384, 53248, 128 * 128, 8 * 128
    layer = (h * (q + 2 * kv) + q * h + 3 * h * f) // 8 + 2 * h    # matrices / TP, 2 norms whole
    vocab = 126 * 1024                                               # 128256 -> multiple of 128*TP
    params = 126 // 2 * layer + vocab * h // 8 + h                   # 63 layers, output layer, norm
    assert params == 25_369_231_360
    m = estimate(get_preset("llama3.1-405b"), get_preset("llama3.1-8b"), 8, 2, 4, Workload())
    assert m.teacher_weights == params * 2                           # bf16
    # the rough figure: 405.85e9 params * 2 bytes / (TP 8 * PP 2), within 1 %
    assert abs(m.teacher_weights / (405.85e9 * 2 / 16) - 1) < 0.01
    assert round(m.teacher_weights / GIB, 1) == 47.3


def test_405b_recipe_layout_fits_and_pp8_is_refused_with_the_layer_count():
    teacher, student = get_preset("llama3.1-405b"), get_preset("llama3.1-8b")
    w = Workload(prompt_len=1024, response_len=2048, micro_batch_size=1, mini_batches=2,
                 prompts_per_step=64, group_size=8, rollout_micro_batch=32)
    from rlad_megatron.launch.plan import PlanRequest
    ok = plan(PlanRequest(teacher, student, nodes=8, gpus_per_node=8, workload=w, tp=8, pp=2))
    assert ok.ok and (ok.chosen.tp, ok.chosen.pp, ok.chosen.dp) == (8, 2, 4)

    # student Llama-3.1-8B at TP=8 PP=2: h=4096, ffn=14336, 32 heads, 8 groups, 32 layers
    h, f, q, kv = 4096, 14336, 32 * 128, 8 * 128
    p_s = 32 // 2 * ((h * (q + 2 * kv) + q * h + 3 * h * f) // 8 + 2 * h) + 126 * 1024 * h // 8 + h
    m = ok.chosen.memory
    assert m.student_weights == p_s * 2 and m.student_grads == p_s * 4
    assert m.optimizer_state == p_s * 12 // 4                       # distributed over DP=4
    # KV cache (the continuous engine's block pool, the default): 2 * 16 layers * (8 groups / 8)
    # * 128 * 256-token blocks * (32 live rows * 3072 / 256 blocks + megatron's 2) * 2 bytes
    assert m.kv_cache == 2 * 16 * 1 * 128 * 256 * (32 * 3072 // 256 + 2) * 2
    static = estimate(teacher, student, 8, 2, 4, dataclasses.replace(w, rollout_engine="static"))
    # the static engine's cache: 2 * 16 layers * 1 group * 128 * 3072 tokens * 32 rows * 2 bytes
    assert static.kv_cache == 2 * 16 * 1 * 128 * 3072 * 32 * 2
    # activations: 16 layers * min(PP=2, micro-batches=64) * s*b*h*(10 + 24/8) * 2/2 (flash attn)
    assert m.activations == 16 * 2 * int(3072 * 1 * 4096 * (10 + 24 / 8))

    bad = plan(PlanRequest(teacher, student, nodes=8, gpus_per_node=8, workload=w, tp=8, pp=8))
    assert not bad.ok
    assert "parallel.pipeline: 8 does not divide teacher.num_layers: 126" in bad.reason
    assert "layouts that fit: TP=8 PP=2 DP=4" in bad.reason


def test_the_continuous_engine_plans_its_block_pool_by_hand():
    """rollout.engine=continuous: the KV cache is the block pool, (live rows x ceil((prompt +
    response) / block) + 2) blocks of `block` tokens (the + 2: megatron's dummy block and the
    rounding margin rollout/continuous.py reserves), not rollout batch x (prompt + response);
    a wrong engine name is refused by its flag."""
    base = dict(prompt_len=1024, response_len=2048, micro_batch_size=4, prompts_per_step=64,
                group_size=8, rollout_micro_batch=64)
    static = estimate(get_preset("qwen3-8b"), get_preset("qwen3-1.7b"), 2, 1, 4,
                      Workload(**base, rollout_engine="static")).kv_cache
    pool = estimate(get_preset("qwen3-8b"), get_preset("qwen3-1.7b"), 2, 1, 4, Workload(
        **base, rollout_engine="continuous", max_live_rows=16, kv_block_size=256)).kv_cache
    per_token = 2 * 28 * (8 // 2) * 128 * 2  # K and V, 28 layers, 4 kv heads per rank, bf16
    assert static == per_token * 3072 * 64
    assert pool == per_token * (16 * 12 + 2) * 256  # 3072 tokens = 12 blocks of 256
    with pytest.raises(ValueError, match="--rollout-engine"):
        build_request(nodes=1, gpus_per_node=8, teacher="qwen3-8b", student="qwen3-1.7b",
                      prompt_len=1024, rollout_engine="paged")


def test_qwen3_8b_to_1_7b_at_tp2_by_hand():
    w = Workload(prompt_len=1024, response_len=2048, micro_batch_size=4, mini_batches=2,
                 prompts_per_step=64, group_size=8, rollout_micro_batch=64)
    m = estimate(get_preset("qwen3-8b"), get_preset("qwen3-1.7b"), 2, 1, 4, w)
    # Qwen3-1.7B: h=2048, ffn=6144, 16 heads, 8 groups, head_dim 128, 28 layers, tied
    # embeddings, qk-norms; vocab 151936 -> 152064 (multiple of 128 * 2)
    h, f, q, kv, d = 2048, 6144, 16 * 128, 8 * 128, 128
    layer = (h * (q + 2 * kv) + q * h + 3 * h * f) // 2 + 2 * h + 2 * d
    p_s = 28 * layer + 152064 * h // 2 + h                          # PP=1: tied embedding once
    assert m.student_weights == p_s * 2
    assert m.optimizer_state == p_s * 12 // 4
    s, b = 1024 + 2048, 4
    assert m.activations == 28 * 1 * int(s * b * h * (10 + 24 / 2))   # PP=1: one in flight
    assert m.activations_recompute == 28 * 1 * s * b * h * 2 + int(s * b * h * (10 + 24 / 2))
    assert m.logits == b * s * (152064 // 2) * 2 * 2                 # logits + grad, bf16
    chunk = (256 << 20) // (4 * 76032)                               # 882 tokens of V/tp fp32
    assert m.logprob_chunk == chunk * 76032 * 4
    # the continuous engine's block pool: 64 live rows x 12 blocks of 256 tokens (+ 2)
    assert m.kv_cache == 2 * 28 * (8 // 2) * 128 * 256 * (64 * s // 256 + 2) * 2
    # Qwen3-8B teacher: h=4096, ffn=12288, 32 heads, 8 groups, 36 layers, untied
    h, f, q, kv = 4096, 12288, 32 * 128, 8 * 128
    p_t = (36 * ((h * (q + 2 * kv) + q * h + 3 * h * f) // 2 + 2 * h + 2 * d)
           + 2 * 152064 * h // 2 + h)
    assert m.teacher_weights == p_t * 2
    assert m.total() == sum(v for k, v in m.parts().items() if k != "activations_recompute")


def test_replicated_optimizer_and_fp32_bytes_per_parameter():
    spec = get_preset("llama3.1-8b")
    p = stage_parameters(spec, 1, 1)
    assert p == spec.num_parameters()          # 128256 is already a multiple of 128
    bf16 = estimate(spec, spec, 1, 1, 8, Workload(distributed_optimizer=False))
    assert (bf16.student_weights, bf16.student_grads, bf16.optimizer_state) == \
        (2 * p, 4 * p, 12 * p)
    fp32 = estimate(spec, spec, 1, 1, 8, Workload(student_dtype="fp32", teacher_dtype="fp32",
                                                  distributed_optimizer=False))
    assert (fp32.student_weights, fp32.optimizer_state, fp32.teacher_weights) == \
        (4 * p, 8 * p, 4 * p)


def test_sequence_parallel_and_stored_attention_scores_follow_korthikanti():
    spec = get_preset("qwen3-8b")      # h=4096, 32 heads
    s, b, t = 2048, 1, 4
    base = dict(prompt_len=1024, response_len=1024, micro_batch_size=b, prompts_per_step=4)
    sp = estimate(spec, spec, t, 1, 1, Workload(**base, sequence_parallel=True))
    assert sp.activations == 36 * int(s * b * 4096 * 34 / t)
    scores = estimate(spec, spec, t, 1, 1, Workload(**base, flash_attention=False))
    assert scores.activations == 36 * int(s * b * 4096 * (10 + 24 / t + 5 * 32 * s / (4096 * t)))


def test_token_budget_bounds_micro_batch_memory_by_its_tokens():
    """train.max_tokens_per_micro_batch: a budget of b x s tokens costs what b rows of s did;
    half that budget, half the activations and logits; a budget below one row still holds a
    row (a longer row is a micro-batch of its own)."""
    spec = get_preset("qwen3-8b")
    base = dict(prompt_len=1024, response_len=1024, prompts_per_step=8)
    rows = estimate(spec, spec, 2, 1, 1, Workload(**base, micro_batch_size=4))
    same = estimate(spec, spec, 2, 1, 1, Workload(**base, max_tokens_per_micro_batch=4 * 2048))
    half = estimate(spec, spec, 2, 1, 1, Workload(**base, max_tokens_per_micro_batch=2 * 2048))
    one = estimate(spec, spec, 2, 1, 1, Workload(**base, micro_batch_size=1))
    tiny = estimate(spec, spec, 2, 1, 1, Workload(**base, max_tokens_per_micro_batch=100))
    assert same.activations == rows.activations and same.logits == rows.logits
    assert half.activations == 36 * int(2048 * 2 * 4096 * (10 + 24 / 2) / 1)
    assert tiny.activations == one.activations and tiny.logits == one.logits


def test_planner_matches_the_bytes_of_models_built_by_megatron():
    """One process, TP=1: the planner's weight and gradient bytes equal what build.py allocates."""
    from rlad_megatron.models.build import OptimizerSettings, build_student, build_teacher
    from rlad_megatron.runtime import ParallelConfig, destroy_parallel, init_parallel

    student = get_preset("tiny-qwen3", vocab_size=300)       # padded to 384, tied embeddings
    teacher = get_preset("tiny-llama", vocab_size=300, num_layers=4, hidden_size=96,
                         ffn_hidden_size=160)
    with single_process_group():
        par = init_parallel(ParallelConfig())
        try:
            s = build_student(student, par, OptimizerSettings())
            t = build_teacher(teacher, par, student_spec=student)
            m = estimate(teacher, student, 1, 1, 1, Workload(student_dtype="fp32",
                                                             teacher_dtype="fp32"))
            assert m.student_weights == s.parameter_bytes()
            assert m.student_grads == s.grad_buffer_bytes()
            assert m.teacher_weights == t.parameter_bytes()
        finally:
            destroy_parallel()


def test_no_fitting_layout_is_refused_with_the_amount():
    w = Workload(prompt_len=4096, response_len=8192, micro_batch_size=8, prompts_per_step=8,
                 rollout_micro_batch=64)
    req = build_request(nodes=1, gpus_per_node=8, gpu_memory_gib=40, teacher="qwen3-32b",
                        student="qwen3-8b", **{k: getattr(w, k) for k in (
                            "prompt_len", "response_len", "micro_batch_size", "prompts_per_step",
                            "rollout_micro_batch")})
    p = plan(req)
    best = p.layouts[0]
    assert not p.ok and p.chosen is best and not best.fits
    over = f"{(best.total - 40 * GIB) / GIB:.1f}"
    assert p.reason.startswith(f"no layout fits; the best, {best.name} needs "
                               f"{best.total / GIB:.1f} GiB per GPU, {over} GiB more than the "
                               "40 GiB")
    assert "refused: no layout fits" in format_plan(p)


def test_sizes_that_do_not_divide_are_named():
    req = build_request(nodes=1, gpus_per_node=8, teacher="qwen3-8b", student="qwen3-1.7b",
                        tp=3, pp=1)
    p = plan(req)
    assert not p.ok and p.chosen is None
    assert "parallel.tensor: 3 does not divide the GPUs per node 8" in p.reason
    assert "parallel.tensor: 3 does not divide teacher.num_attention_heads: 32" in p.reason
    assert "parallel.tensor: 3 does not divide student.num_query_groups: 8" in p.reason
    # 3 GPUs: DP 3 cannot split 16 prompts, and TP 3 divides no head count
    none = plan(build_request(nodes=1, gpus_per_node=3, teacher="qwen3-8b", student="qwen3-1.7b"))
    assert not none.ok and not none.layouts
    assert none.reason.startswith("no valid layout on 1 x 3 GPUs: TP in [1]")


def test_layouts_are_ranked_by_step_time_then_headroom_and_respect_the_rules():
    p = plan(build_request(nodes=2, gpus_per_node=8, teacher="qwen3-32b", student="qwen3-8b"))
    assert p.ok
    ok = [lp for lp in p.layouts if lp.fits and lp.headroom >= 2 * GIB]
    rest = p.layouts[len(ok):]
    assert ok and p.layouts[:len(ok)] == ok                      # recommendable ones first
    assert [lp.time.total for lp in ok] == sorted(lp.time.total for lp in ok)
    assert [lp.headroom for lp in rest] == sorted((lp.headroom for lp in rest), reverse=True)
    # TP divides 8 GPUs per node, PP divides gcd(64, 36) = 4, TP * PP divides 16 GPUs
    assert {(lp.tp, lp.pp) for lp in p.layouts} == {(tp, pp) for tp in (1, 2, 4, 8)
                                                    for pp in (1, 2, 4) if tp * pp <= 16}
    assert all(lp.tp * lp.pp * lp.dp == 16 for lp in p.layouts)


def test_model_sources_hf_config_and_megatron_checkpoint(tmp_path):
    hf = tmp_path / "Qwen3-1.7B"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({
        "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": 2048,
        "intermediate_size": 6144, "num_hidden_layers": 28, "num_attention_heads": 16,
        "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936,
        "max_position_embeddings": 40960, "rope_theta": 1000000, "rms_norm_eps": 1e-6,
        "tie_word_embeddings": True}))
    preset = get_preset("qwen3-1.7b")
    for source in (hf, hf / "config.json"):
        spec = load_model_spec(str(source), "student")
        assert spec.num_parameters() == preset.num_parameters() and spec.head_dim == 128
    ckpt = tmp_path / "ckpt"
    (ckpt / "iter_0000000").mkdir(parents=True)
    (ckpt / "latest_checkpointed_iteration.txt").write_text("0")
    (ckpt / "iter_0000000" / "rlad_model.json").write_text(json.dumps({"spec": preset.to_dict()}))
    assert load_model_spec(str(ckpt), "teacher") == preset
    with pytest.raises(ValueError, match="'qwen9' is neither a preset"):
        load_model_spec("qwen9", "teacher")


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_recipe_configs_plan_their_own_layout_and_validate(recipe, tmp_path):
    from rlad_megatron.config.run import load_config

    nodes, layout = RECIPES[recipe]
    config = str(REPO / "examples" / "configs" / f"{recipe}.yaml")
    p = plan(build_request(nodes=nodes, gpus_per_node=8, config=config))
    assert p.ok, p.reason
    assert (p.chosen.tp, p.chosen.pp, p.chosen.dp) == layout
    # the config is a valid run config once its checkpoints exist (CPU: no distributed optimizer)
    for role in ("teacher", "student"):
        (tmp_path / role).mkdir()
    cfg = load_config(config, [f"teacher.checkpoint={tmp_path / 'teacher'}",
                               f"student.checkpoint={tmp_path / 'student'}",
                               "optimizer.distributed=false"])
    assert cfg.student.dtype == cfg.teacher.dtype == "bf16"
    validate_run_config(cfg, world_size=nodes * 8)


def test_cli_json_and_exit_status(capsys):
    assert rlad_main(["plan", "--teacher", "llama3.1-405b", "--student", "llama3.1-8b",
                      "--nodes", "8", "--gpus-per-node", "8", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] and (out["chosen"]["tp"], out["chosen"]["pp"]) == (8, 2)
    assert out["chosen"]["memory_bytes"]["teacher_weights"] == 25_369_231_360 * 2
    assert rlad_main(["plan", "--teacher", "llama3.1-405b", "--student", "llama3.1-8b",
                      "--nodes", "1", "--gpus-per-node", "8"]) == 2
    assert "refused: no layout fits; the best, TP=8 PP=1 DP=1" in capsys.readouterr().out
    assert rlad_main(["plan", "--config", str(REPO / "examples/configs/qwen3_32b_to_8b.yaml"),
                      "--nodes", "4", "--gpus-per-node", "8", "parallel.tensor=3"]) == 2
    assert "parallel.tensor: 3 does not divide" in capsys.readouterr().out


def test_constants_agree_with_the_code_they_describe():
    from rlad_megatron.launch import memory
    from rlad_megatron.ops.chunks import DEFAULT_CHUNK_BYTES

    assert memory.LOGPROB_CHUNK_BYTES == DEFAULT_CHUNK_BYTES["cuda"]
    build = (REPO / "rlad_megatron" / "models" / "build.py").read_text()
    assert "grad_reduce_in_fp32=True" in build and memory.GRAD_BYTES == 4


@pytest.mark.parametrize("flag, value", [("--gpu-memory", "0"), ("--gpu-memory", "-8"),
                                         ("--nodes", "0"), ("--gpus-per-node", "-1")])
def test_nonpositive_machine_sizes_are_refused_by_the_cli(flag, value, capsys):
    """`rlad plan --gpu-memory 0` (and other sizes <= 0) is refused."""
    from rlad_megatron.cli import main

    args = ["plan", "--teacher", "qwen3-8b", "--student", "qwen3-1.7b", "--nodes", "1",
            "--gpus-per-node", "8"]
    args += [flag, value]
    assert main(args) == 2
    assert f"{flag}: {float(value):g} must be > 0" in capsys.readouterr().err


@pytest.mark.parametrize("flag, value, least", [
    ("--prompt-len", "-5000", 1), ("--response-len", "-1000", 1), ("--stream-window", "0", 1),
    ("--stream-window", "-3", 1), ("--prompts-per-step", "0", 1), ("--group-size", "0", 1),
    ("--micro-batch-size", "0", 1), ("--rollout-batch", "-1", 0),
    ("--max-tokens-per-micro-batch", "-1", 0), ("--reserve", "-1", 0)])
def test_nonpositive_workload_sizes_are_refused_by_the_cli(flag, value, least, capsys):
    """Issue 26 item 3: --prompt-len -5000 "fitted" with negative step times, --stream-window 0
    was "ok" and a zero batch size was a ZeroDivisionError traceback."""
    from rlad_megatron.cli import main

    args = ["plan", "--teacher", "qwen3-8b", "--student", "qwen3-1.7b", "--nodes", "1",
            "--gpus-per-node", "8", flag, value]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"{flag}" in err and f"{float(value):g} must be >= {least}" in err, err


def test_a_run_configs_nonpositive_size_is_named_with_its_key(capsys):
    from rlad_megatron.cli import main

    assert main(["plan", "--config", str(REPO / "examples/configs/qwen3_8b_to_1.7b.yaml"),
                 "--nodes", "1", "--gpus-per-node", "8", "train.mini_batches=0"]) == 2
    assert "train.mini_batches: 0 must be >= 1" in capsys.readouterr().err


# ------------------------------------------------------------- streamed teacher, step time
H405, F405, Q405, KV405 = 16384, 53248, 128 * 128, 8 * 128


def _layer_405b(tp):
    return (H405 * (Q405 + 2 * KV405) + Q405 * H405 + 3 * H405 * F405) // tp + 2 * H405


def test_405b_streamed_teacher_on_one_node_by_hand():
    w = Workload(prompts_per_step=8, group_size=8, prompt_len=1024, response_len=1024,
                 teacher_offload="stream", stream_window=2)
    m = estimate(get_preset("llama3.1-405b"), get_preset("llama3.1-8b"), 4, 1, 2, w)
    layer = _layer_405b(4)
    assert layer == 796_917_760 + 32768
    # PP=1: the embedding and the untied output layer (vocab 128256 -> 128512 at TP 4), final norm
    head = 2 * 128512 * H405 // 4 + H405
    assert m.teacher_weights == (2 * layer + head) * 2
    assert round(m.teacher_weights / GIB, 1) == 4.9
    # the rank's 32 rows x 2048 tokens of hidden states wait between layers (bf16)
    assert m.teacher_activations == 32 * 2048 * H405 * 2
    p = plan(build_request(nodes=1, gpus_per_node=8, teacher="llama3.1-405b",
                           student="llama3.1-8b", prompts_per_step=8, group_size=8,
                           prompt_len=1024, response_len=1024, teacher_offload="stream",
                           host_memory_gib=2048))
    assert p.ok and (p.chosen.tp, p.chosen.pp, p.chosen.dp) == (4, 1, 2)
    # every rank holds its TP shard of all 126 layers in host memory: 8 ranks per node
    assert p.chosen.host_per_node == 8 * 126 * layer * 2
    assert round(p.chosen.host_per_node / GIB) == 1496
    by_layout = {(lp.tp, lp.pp): lp for lp in p.layouts}
    assert not by_layout[(2, 1)].fits                     # TP=2 x DP=4: 2.9 TiB of host memory
    assert by_layout[(2, 1)].headroom > 0
    # resident, the teacher does not fit one node at all
    resident = plan(build_request(nodes=1, gpus_per_node=8, teacher="llama3.1-405b",
                                  student="llama3.1-8b", prompts_per_step=8))
    assert not resident.ok and "no layout fits" in resident.reason


def test_host_memory_overflow_is_named():
    p = plan(build_request(nodes=1, gpus_per_node=8, teacher="llama3.1-405b",
                           student="llama3.1-8b", prompts_per_step=8, teacher_offload="stream",
                           host_memory_gib=1024, tp=4, pp=1))
    assert not p.ok
    assert ("TP=4 PP=1 DP=2: the streamed teacher's layers need 1496.3 GiB of host memory per "
            "node (8 ranks x 187.0 GiB), 472.3 GiB more than --host-memory 1024 GiB") in p.reason
    assert "TP=8 PP=1 DP=1 (" in p.reason                   # the layout that fits is offered


def test_fastest_layout_is_recommended_not_the_most_sharded():
    p = plan(build_request(nodes=4, gpus_per_node=8, teacher="qwen3-32b", student="qwen3-8b"))
    fitting = [lp for lp in p.layouts if lp.fits and lp.headroom >= 2 * GIB]
    assert p.ok and p.chosen is fitting[0]
    assert p.chosen.time.total == min(lp.time.total for lp in fitting)
    assert (p.chosen.tp, p.chosen.pp) != (8, 4)
    most_sharded = next(lp for lp in p.layouts if (lp.tp, lp.pp) == (8, 4))
    assert most_sharded.headroom == max(lp.headroom for lp in p.layouts)
    assert most_sharded.time.pp_bubble > 0 and most_sharded.time.total > p.chosen.time.total
    # a higher minimum headroom moves the recommendation to a layout that leaves it
    strict = plan(build_request(nodes=4, gpus_per_node=8, teacher="qwen3-32b",
                                student="qwen3-8b", min_headroom_gib=60))
    assert strict.ok and strict.chosen.headroom >= 60 * GIB


def test_step_time_parts_by_hand():
    t, s = get_preset("qwen3-32b"), get_preset("qwen3-8b")
    w = Workload(prompt_len=1024, response_len=1024, prompts_per_step=16, group_size=8,
                 micro_batch_size=1)
    hw = Hardware()
    rate = 989e12 * 0.4
    st = estimate_step(t, s, 2, 1, 16, w, gpus_per_node=8, hw=hw)
    rows, tokens = 8, 8 * 2048
    assert st.student_compute == pytest.approx(8 * s.num_parameters() * tokens / 2 / rate)
    assert st.teacher_forward == pytest.approx(2 * t.num_parameters() * tokens / 2 / rate)
    assert st.pp_bubble == 0
    # 4 all-reduces of 2048 x 4096 bf16 per student layer and micro-batch (6 with the old-policy
    # pass), 2 per teacher layer (h 5120), ring factor 2 (tp-1)/tp = 1 at tp 2, plus 10 us each
    ar = lambda h: 2048 * h * 2 / 450e9 + 10e-6  # noqa: E731
    assert st.tp_comm == pytest.approx(rows * (36 * 6 * ar(4096) + 64 * 2 * ar(5120)))
    # DP=16 over 2 TP ranks x 16 = 32 GPUs: leaves the node, fp32 gradients over InfiniBand
    assert st.dp_allreduce == pytest.approx(2 * 15 / 16 * s.num_parameters() / 2 * 4 / 50e9
                                            + 10e-6)
    streamed = estimate_step(t, s, 2, 2, 8, dataclasses.replace(w, teacher_offload="stream"),
                             gpus_per_node=8, hw=hw)
    layer = layer_parameters(t, 2) * 2
    compute = 2 * t.num_parameters() * 16 * 2048 / 4 / rate
    assert streamed.teacher_forward == pytest.approx(
        2 * (max(compute, 32 * layer / 50e9) + layer / 50e9))


def test_the_on_policy_step_is_planned_without_the_old_policy_pass(tmp_path):
    """Workload.old_logprobs_pass False (train.old_logprobs=auto at train.mini_batches=1): the
    student's compute is 6 P T (forward and backward) instead of 8 P T, and its TP all-reduces 4
    per layer and micro-batch instead of 6; from_run_config reads it from the run config."""
    from rlad_megatron.config.run import load_config

    t, s = get_preset("qwen3-32b"), get_preset("qwen3-8b")
    w = Workload(prompt_len=1024, response_len=1024, prompts_per_step=16, group_size=8,
                 micro_batch_size=1)
    hw = Hardware()
    with_pass = estimate_step(t, s, 2, 1, 16, w, gpus_per_node=8, hw=hw)
    on_policy = estimate_step(t, s, 2, 1, 16, dataclasses.replace(w, old_logprobs_pass=False),
                              gpus_per_node=8, hw=hw)
    assert on_policy.student_compute == pytest.approx(with_pass.student_compute * 6 / 8)
    ar = lambda h: 2048 * h * 2 / 450e9 + 10e-6  # noqa: E731
    assert on_policy.tp_comm == pytest.approx(8 * (36 * 4 * ar(4096) + 64 * 2 * ar(5120)))
    cfg = load_config(None, ["train.mini_batches=1"])
    assert not Workload.from_run_config(cfg).old_logprobs_pass
    assert Workload.from_run_config(load_config(None, ["train.mini_batches=2"])).old_logprobs_pass
    assert Workload.from_run_config(load_config(None, ["train.old_logprobs=pass"])
                                    ).old_logprobs_pass


def test_hardware_overrides_are_checked():
    assert Hardware.from_overrides(["mfu=0.5"]).mfu == 0.5
    with pytest.raises(ValueError, match="--hw 'flops=1': expected KEY=VALUE with KEY one of"):
        Hardware.from_overrides(["flops=1"])
    with pytest.raises(ValueError, match="--hw mfu: 0 must be > 0"):
        Hardware.from_overrides(["mfu=0"])
