"""A teacher streamed from host memory (teacher.offload=stream, models/teacher_stream.py)
against the resident teacher: the same weights scored both ways must give bit-identical fused
log-probs at DP=2, TP=2, PP=2 and PP=2 x VPP=2, with each decoder layer copied to the device
exactly once per scoring call (layer-major: layer l over every micro-batch before layer l+1) and
at most `window` layers resident. A mismatch points at the layer-by-layer forward
(streamed_logprobs) or the stage-to-stage send/receive; a residency failure at LayerWindow."""

import pytest
import torch

from distributed_helpers import assert_all_ranks
from model_checks import load_weights, random_tokens
from rlad_megatron.convert.init_weights import random_hf_weights
from rlad_megatron.models.build import build_teacher
from rlad_megatron.models.forward import forward_logprobs
from rlad_megatron.models.spec import get_preset
from rlad_megatron.models.teacher_stream import stream_metrics, stream_teacher, streamed_logprobs

LAYOUTS = [(1, 1), (2, 1), (1, 2), (1, 2, 2)]
LAYOUT_IDS = ["dp2", "tp2", "pp2", "pp2-vpp2"]


def _teachers(parallel, arch):
    spec = get_preset(arch, num_layers=4)
    weights = random_hf_weights(spec, seed=5)
    resident, streamed = build_teacher(spec, parallel), build_teacher(spec, parallel)
    load_weights(resident, weights)
    load_weights(streamed, weights)
    return spec, resident, streamed


@pytest.mark.parametrize("parallel", LAYOUTS, indirect=True, ids=LAYOUT_IDS)
@pytest.mark.parametrize("arch,temperature", [("tiny-llama", 1.0), ("tiny-qwen3", 0.7)],
                         ids=["llama", "qwen3-tied-temp0.7"])
def test_streamed_teacher_is_bit_identical_to_resident(parallel, arch, temperature):
    spec, resident, streamed = _teachers(parallel, arch)
    tokens = random_tokens(spec, b=4, s=12)
    expected = forward_logprobs(resident, tokens, micro_batch_size=2, temperature=temperature,
                                fused=True)
    teacher = stream_teacher(streamed, window=2)
    got = streamed_logprobs(teacher, tokens, micro_batch_size=2, temperature=temperature)
    if parallel.is_last_stage:
        assert_all_ranks(torch.equal(got, expected),
                         f"streamed log-probs differ: max |diff| {(got - expected).abs().max()}")
    else:
        assert_all_ranks(got is None, "only the last stage returns log-probs")
    # a second call (the next step) streams again and gives the same numbers
    again = streamed_logprobs(teacher, tokens, micro_batch_size=2, temperature=temperature)
    assert_all_ranks(not parallel.is_last_stage or torch.equal(again, got), "second call differs")


@pytest.mark.parametrize("parallel", [(1, 1), (1, 2, 2)], indirect=True, ids=["dp2", "pp2-vpp2"])
@pytest.mark.parametrize("window", [1, 2])
def test_layer_major_order_and_resident_bytes(parallel, window):
    spec, _, streamed = _teachers(parallel, "tiny-llama")
    teacher = stream_teacher(streamed, window=window)
    layers = [layer for m in teacher.modules for layer in m.decoder.layers]
    calls = []
    for i, layer in enumerate(layers):
        layer.register_forward_hook(lambda mod, args, out, i=i: calls.append(i))
    always = teacher.residency.current()        # embedding, final norm, output layer
    layer_bytes = [s.nbytes for s in teacher.window.stores]
    assert_all_ranks(always > 0 and min(layer_bytes) > 0, "nothing resident / empty layers")
    n_micro = 3
    streamed_logprobs(teacher, random_tokens(spec, b=6, s=10), micro_batch_size=2)
    expected_order = [i for i in range(len(layers)) for _ in range(n_micro)]
    assert_all_ranks(calls == expected_order, f"not layer-major: {calls}")
    assert_all_ranks(teacher.residency.loads == [1] * len(layers),
                     f"each layer must cross once per call: {teacher.residency.loads}")
    peak = teacher.residency.peak
    bound = always + sum(sorted(layer_bytes)[-window:])
    assert_all_ranks(peak <= bound, f"resident peak {peak} > bound {bound}")
    assert_all_ranks(peak >= always + min(layer_bytes) * min(window, len(layers)),
                     f"resident peak {peak} below the window's layers")
    assert_all_ranks(teacher.residency.current() == always, "layers stay resident after scoring")
    metrics = stream_metrics(teacher)
    assert_all_ranks(metrics["teacher/host_mib"] * 2 ** 20 == sum(layer_bytes) and
                     metrics["teacher/resident_mib"] * 2 ** 20 == peak, f"metrics {metrics}")
