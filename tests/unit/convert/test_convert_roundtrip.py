"""Single-process import and export of tiny random Hugging Face models, the CLI, and the errors.

Guards: HF -> Megatron (TP=1) gives the HF model's logits over the whole vocabulary and its
log-probs; Megatron -> HF gives back every tensor bit for bit, a config.json transformers loads,
and the tokenizer; bf16 stays bf16 and exact; bad inputs fail with the file or key in the
message. A log-prob failure for one architecture points at convert/keymaps.py or hf_config.py
(its RoPE, bias, norm or tying); a tensor mismatch at convert/megatron_to_hf.py."""

import json
import runpy
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from distributed_helpers import process_group  # noqa: F401 (module fixture)
from hf_models import (CASES, CONFIG_FIELDS, LOGPROB_ATOL, assert_same_tensors,
                       hf_logits_and_logprobs, load_hf, make_case, make_hf_model, random_tokens)
from rlad_megatron import cli
from rlad_megatron.convert.hf_to_megatron import import_hf
from rlad_megatron.convert.megatron_to_hf import export_hf
from rlad_megatron.models import checkpoint
from rlad_megatron.models.build import build_teacher
from rlad_megatron.models.forward import MicroBatch, forward_logprobs

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def par():
    from rlad_megatron.runtime import ParallelConfig, destroy_parallel, init_parallel

    yield lambda: init_parallel(ParallelConfig())
    destroy_parallel()


def megatron_logits_and_logprobs(par, root, tokens):
    spec = checkpoint.read_spec(root)
    teacher = build_teacher(spec, par)
    checkpoint.load_model(root, teacher.chunks)
    mb = MicroBatch.from_tokens(tokens)
    with torch.no_grad():
        logits = teacher.chunks[0](input_ids=mb.tokens, position_ids=mb.position_ids,
                                   attention_mask=mb.attention_mask)
    lp = forward_logprobs(teacher, tokens, micro_batch_size=tokens.shape[0])
    return logits[..., :spec.vocab_size], lp


@pytest.mark.parametrize("case", list(CASES))
def test_import_matches_hf_and_export_gives_back_every_tensor(case, par, tmp_path):
    src = make_case(tmp_path / "hf", case)
    folder = import_hf(src, tmp_path / "mg")
    assert folder == tmp_path / "mg" / "iter_0000000"
    assert (tmp_path / "mg" / checkpoint.POINTER).read_text().strip() == "0"
    meta = checkpoint.read_model_meta(tmp_path / "mg")
    assert meta["tokenizer"] == str(src.resolve()) and meta["dtype"] == "fp32"
    assert (folder / "tokenizer" / "tokenizer.json").is_file()

    hf = load_hf(src)
    tokens = random_tokens(hf.config.vocab_size)
    ref_logits, ref_lp = hf_logits_and_logprobs(hf, tokens)
    logits, lp = megatron_logits_and_logprobs(par(), tmp_path / "mg", tokens)
    assert (logits - ref_logits).abs().max() < LOGPROB_ATOL
    assert (lp - ref_lp).abs().max() < LOGPROB_ATOL

    out = export_hf(tmp_path / "mg", tmp_path / "out", max_shard_bytes=50_000)
    assert_same_tensors(out, src)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    got, want = (json.loads((d / "config.json").read_text()) for d in (out, src))
    assert {k: got.get(k) for k in CONFIG_FIELDS} == {k: want.get(k) for k in CONFIG_FIELDS}
    assert (out / "tokenizer.json").read_text() == (src / "tokenizer.json").read_text()
    assert json.loads((out / "generation_config.json").read_text()) == \
        json.loads((src / "generation_config.json").read_text())
    again, _ = hf_logits_and_logprobs(load_hf(out), tokens)  # transformers loads the export
    assert torch.equal(again, ref_logits)


def test_bf16_import_and_export_stay_bf16_and_exact(tmp_path):
    src = make_case(tmp_path / "hf", "qwen3", dtype=torch.bfloat16)
    import_hf(src, tmp_path / "mg")
    assert checkpoint.read_model_meta(tmp_path / "mg")["dtype"] == "bf16"
    out = export_hf(tmp_path / "mg", tmp_path / "out")
    assert_same_tensors(out, src)
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    fp32 = export_hf(tmp_path / "mg", tmp_path / "out32", dtype="fp32")
    a = load_file(str(next(fp32.glob("*.safetensors"))))
    b = load_file(str(src / "model.safetensors"))
    assert all(a[n].dtype == torch.float32 and torch.equal(a[n].bfloat16(), b[n]) for n in a)


def test_cli_import_inspect_logprobs_export_and_tools_wrapper(tmp_path, capsys, monkeypatch):
    src = make_case(tmp_path / "hf", "qwen2")
    mg, out = tmp_path / "mg", tmp_path / "out"
    assert cli.main(["convert", "import", "--hf-model", str(src), "--megatron-path", str(mg)]) == 0
    assert cli.main(["convert", "inspect", str(mg)]) == 0
    text = capsys.readouterr().out
    assert "decoder.layers.self_attention.linear_qkv.weight" in text and "[2, 128, 64]" in text
    assert "qkv_bias: True" in text
    assert cli.main(["logprobs", "--megatron-path", str(mg), "--text", "Hi you", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [r["token"] for r in rows] == list("Hi you") and rows[0]["logprob"] is None
    tokens = torch.tensor([[r["token_id"] for r in rows]])
    _, ref = hf_logits_and_logprobs(load_hf(src), tokens)
    assert max(abs(r["logprob"] - ref[0, t].item()) for t, r in enumerate(rows) if t) < LOGPROB_ATOL
    monkeypatch.setattr(sys, "argv", ["convert_checkpoint.py", "export", "--megatron-path",
                                      str(mg), "--hf-path", str(out)])
    with pytest.raises(SystemExit) as exit_code:
        runpy.run_path(str(ROOT / "tools" / "convert_checkpoint.py"), run_name="__main__")
    assert exit_code.value.code == 0
    assert_same_tensors(out, src)
    assert cli.main(["convert", "export", "--megatron-path", str(mg), "--hf-path", str(out)]) == 2
    assert "exists and is not empty" in capsys.readouterr().err


def test_export_of_a_checkpoint_without_source_config_or_tokenizer(tmp_path):
    """Like a trainer checkpoint: only the spec. The export is still a model transformers loads;
    --hf-reference adds the tokenizer and the source config's other fields."""
    src = make_case(tmp_path / "hf", "llama")
    folder = import_hf(src, tmp_path / "mg")
    meta = json.loads((folder / checkpoint.MODEL_META).read_text())
    (folder / checkpoint.MODEL_META).write_text(json.dumps({"spec": meta["spec"]}))
    shutil.rmtree(folder / "tokenizer")
    bare = export_hf(tmp_path / "mg", tmp_path / "bare")
    assert not (bare / "tokenizer.json").exists()
    tokens = random_tokens(250)
    ref, _ = hf_logits_and_logprobs(load_hf(src), tokens)
    assert torch.equal(hf_logits_and_logprobs(load_hf(bare), tokens)[0], ref)
    out = export_hf(tmp_path / "mg", tmp_path / "out", hf_reference=src)
    got, want = (json.loads((d / "config.json").read_text()) for d in (out, src))
    assert {k: got.get(k) for k in CONFIG_FIELDS} == {k: want.get(k) for k in CONFIG_FIELDS}
    assert (out / "tokenizer.json").read_text() == (src / "tokenizer.json").read_text()


# --- errors ------------------------------------------------------------------------------------

def test_unsupported_architecture_is_named(tmp_path):
    from transformers import GPT2Config

    GPT2Config(n_layer=1, n_embd=32, n_head=2).save_pretrained(str(tmp_path))
    with pytest.raises(ValueError, match=r"config.json: model_type 'gpt2' .* not supported"):
        import_hf(tmp_path, tmp_path / "mg")


def test_missing_config_and_missing_weights_are_named(tmp_path):
    src = make_case(tmp_path / "hf", "llama")
    (src / "config.json").rename(tmp_path / "config.json")
    with pytest.raises(FileNotFoundError, match=r"hf/config.json is missing"):
        import_hf(src, tmp_path / "mg")
    (tmp_path / "config.json").rename(src / "config.json")
    (src / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"neither model.safetensors.index.json nor "):
        import_hf(src, tmp_path / "mg")


def test_shard_named_in_the_index_but_missing_is_named(tmp_path):
    src = make_case(tmp_path / "hf", "qwen2")
    index = json.loads((src / "model.safetensors.index.json").read_text())
    victim = sorted(set(index["weight_map"].values()))[1]
    (src / victim).unlink()
    with pytest.raises(FileNotFoundError, match=rf"index.json names shard {victim} \(holding "):
        import_hf(src, tmp_path / "mg")


def _rewrite(src: Path, edit) -> None:
    state = load_file(str(src / "model.safetensors"))
    edit(state)
    save_file(state, str(src / "model.safetensors"), metadata={"format": "pt"})


def test_tensor_with_the_wrong_shape_missing_or_unknown_is_named(tmp_path):
    src = make_case(tmp_path / "hf", "llama")
    k = "model.layers.1.self_attn.k_proj.weight"
    _rewrite(src, lambda s: s.update({k: s[k][:16]}))
    with pytest.raises(ValueError, match=rf"model.safetensors: tensor {k} has shape \[16, 64\], "
                                         r"but .*config.json implies \[32, 64\]"):
        import_hf(src, tmp_path / "mg")
    _rewrite(src, lambda s: s.pop(k))
    with pytest.raises(KeyError, match=rf"model.safetensors: no tensor {k}"):
        import_hf(src, tmp_path / "mg")
    src = make_case(tmp_path / "hf2", "llama")
    _rewrite(src, lambda s: s.update({"model.layers.0.self_attn.o_proj.bias": torch.zeros(64)}))
    with pytest.raises(ValueError, match=r"o_proj.bias have no place in a llama model"):
        import_hf(src, tmp_path / "mg")


def test_tp_that_does_not_divide_the_heads_is_refused_before_any_work(tmp_path):
    src = make_hf_model(tmp_path / "hf", "llama", vocab=128, tied=True)
    cfg = json.loads((src / "config.json").read_text())
    cfg.update(num_attention_heads=3, num_key_value_heads=3, head_dim=16)  # like SmolLM2's 9/3
    (src / "config.json").write_text(json.dumps(cfg))
    # TP=3 would split the heads but not intermediate_size=128: TP=1 is the only choice
    with pytest.raises(ValueError, match=r"config.json: --tp: 2 does not divide "
                                         r"num_attention_heads: 3 \(possible TP: 1\)"):
        import_hf(src, tmp_path / "mg", tp=2)
    assert not (tmp_path / "mg").exists()


def test_cli_import_guards_its_target_and_export_refuses_a_file(tmp_path, capsys):
    """`convert import --tp 2` runs from one process; importing into a folder that holds a
    checkpoint is refused with its pointer untouched; `export --hf-path FILE` is a named error,
    not a traceback, and leaves the file as it was."""
    src, mg = make_case(tmp_path / "hf", "llama"), tmp_path / "mg"
    assert cli.main(["convert", "import", "--hf-model", str(src), "--megatron-path", str(mg),
                     "--tp", "2"]) == 0
    assert "one process writes the checkpoint whole; it loads at --tp 2" in capsys.readouterr().out
    (mg / "iter_0000040").mkdir()                     # a training run's later iteration
    (mg / "latest_checkpointed_iteration.txt").write_text("40\n")
    assert cli.main(["convert", "import", "--hf-model", str(src), "--megatron-path",
                     str(mg)]) == 2
    assert "already holds a checkpoint (iterations [0, 40])" in capsys.readouterr().err
    assert (mg / "latest_checkpointed_iteration.txt").read_text() == "40\n"
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    assert cli.main(["convert", "export", "--megatron-path", str(mg / "iter_0000000"),
                     "--hf-path", str(a_file)]) == 2
    err = capsys.readouterr().err
    assert "--hf-path" in err and "is a file" in err and "Traceback" not in err
    assert a_file.read_text() == "mine"


def test_export_refuses_a_checkpoint_that_disagrees_with_its_spec(tmp_path):
    src = make_case(tmp_path / "hf", "llama")
    folder = import_hf(src, tmp_path / "mg")
    meta = json.loads((folder / checkpoint.MODEL_META).read_text())
    meta["spec"]["ffn_hidden_size"] = 96
    (folder / checkpoint.MODEL_META).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"tensor decoder.layers.mlp.linear_fc1.weight has "
                                         r"global shape \[2, 256, 64\], the spec .* implies "
                                         r"\[2, 192, 64\]"):
        export_hf(tmp_path / "mg", tmp_path / "out")
    (folder / checkpoint.MODEL_META).unlink()
    with pytest.raises(FileNotFoundError, match=r"rlad_model.json is missing"):
        export_hf(tmp_path / "mg", tmp_path / "out")
