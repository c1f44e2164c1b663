"""`rlad logprobs` on a converted tiny model (issue 26 items 5, 12 and the BOS default): the
tokenizer's own BOS default is followed and named, a text past the model's positions is refused,
and --tp > 1 from one process points at torchrun."""

import json

import pytest

from distributed_helpers import process_group  # noqa: F401 (module fixture)
from hf_models import make_case
from rlad_megatron import cli


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """A tiny qwen2 model whose config allows 8 positions, imported; and a copy of its character
    tokenizer that puts <s> first, as many Hugging Face tokenizers do."""
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoTokenizer

    tmp = tmp_path_factory.mktemp("logprobs")
    src = make_case(tmp / "hf", "qwen2")
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 8}))
    mg = tmp / "mg"
    assert cli.main(["convert", "import", "--hf-model", str(src), "--megatron-path", str(mg)]) == 0
    tok = AutoTokenizer.from_pretrained(str(src))
    tok.backend_tokenizer.post_processor = TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.bos_token_id)])
    tok.save_pretrained(str(tmp / "bos_tok"))
    return mg, tmp / "bos_tok"


def _run(capsys, *args):
    code = cli.main(["logprobs", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_bos_follows_the_tokenizers_default_and_is_named(converted, capsys):
    mg, bos_tok = converted
    code, out, err = _run(capsys, "--megatron-path", str(mg), "--text", "Hi", "--json")
    assert code == 0 and "bos token not prepended (the tokenizer's default)" in err
    assert [r["token"] for r in json.loads(out.strip().splitlines()[-1])] == ["H", "i"]
    code, out, err = _run(capsys, "--megatron-path", str(mg), "--tokenizer", str(bos_tok),
                          "--text", "Hi", "--json")
    assert code == 0 and "bos token prepended (the tokenizer's default)" in err
    assert [r["token_id"] for r in json.loads(out.strip().splitlines()[-1])][0] == 1
    code, out, err = _run(capsys, "--megatron-path", str(mg), "--tokenizer", str(bos_tok),
                          "--text", "Hi", "--json", "--no-add-bos")
    assert code == 0 and "bos token not prepended (--no-add-bos)" in err
    assert len(json.loads(out.strip().splitlines()[-1])) == 2


def test_a_text_past_the_models_positions_is_refused(converted, capsys):
    mg, _ = converted
    code, _, err = _run(capsys, "--megatron-path", str(mg), "--text", "x" * 9)
    assert code == 2
    assert "--text: 9 tokens exceed the model's max_position_embeddings 8" in err
    assert _run(capsys, "--megatron-path", str(mg), "--text", "x" * 8)[0] == 0


def test_tp_from_one_process_points_at_torchrun(converted, capsys):
    mg, _ = converted
    code, _, err = _run(capsys, "--megatron-path", str(mg), "--text", "Hi", "--tp", "2")
    assert code == 2
    assert "does not divide the world size 1: this is one process; launch it with torchrun " \
           "--nproc-per-node 2" in err


def test_a_converted_checkpoint_trains_with_its_own_tokenizer_copy_after_the_source_moved(
        tmp_path):
    """Issue 26 item 4: train/setup.py read meta["tokenizer"] (the HF folder's path) and ignored
    the copy in iter_0000000/tokenizer, so moving the HF folder broke `rlad train`."""
    from rlad_megatron.data.tokenizer import load_tokenizer
    from rlad_megatron.config.run import ModelConfig
    from rlad_megatron.train.setup import tokenizer_path

    src = make_case(tmp_path / "hf", "qwen2")
    mg = tmp_path / "mg"
    assert cli.main(["convert", "import", "--hf-model", str(src), "--megatron-path", str(mg)]) == 0
    src.rename(tmp_path / "moved")
    path = tokenizer_path(ModelConfig(checkpoint=str(mg)), "student")
    assert path == str(mg / "iter_0000000" / "tokenizer")
    assert load_tokenizer(path).encode("Hi") == [ord("H") - 29, ord("i") - 29]


def test_exported_safetensors_are_readable_by_others(converted, tmp_path):
    """Issue 26: exported weights were mode 0600 (safetensors' own), unlike the other files."""
    import os
    import stat

    mg, _ = converted
    old = os.umask(0o022)
    try:
        assert cli.main(["convert", "export", "--megatron-path", str(mg), "--hf-path",
                         str(tmp_path / "out")]) == 0
    finally:
        os.umask(old)
    shards = sorted((tmp_path / "out").glob("*.safetensors"))
    assert shards and all(stat.S_IMODE(f.stat().st_mode) == 0o644 for f in shards)


def test_commands_print_no_library_warnings(converted):
    """Issue 26: every command printed about 8 warnings of megatron-core and torch (missing
    Apex / Transformer Engine, deprecations inside them) that a user can do nothing about."""
    import os
    import subprocess
    import sys

    mg, _ = converted
    env = {k: v for k, v in os.environ.items()  # not this test process's group either
           if k not in ("PYTHONWARNINGS", "MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE",
                        "LOCAL_RANK")}
    out = subprocess.run([sys.executable, "-m", "rlad_megatron.cli", "logprobs",
                          "--megatron-path", str(mg), "--text", "Hi"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Warning" not in out.stderr, out.stderr[-3000:]
