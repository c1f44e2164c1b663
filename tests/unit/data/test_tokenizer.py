"""Tokenizers on real files: mistral-common's 32k sentencepiece model, a sentencepiece model and a
Hugging Face tokenizer trained here, and the teacher/student vocabulary guard.

A failure here usually means a tokenizer kind is detected wrongly, special tokens are added (or
not) where the interface says otherwise, or two different vocabularies were accepted as one.
"""

import importlib.metadata
import io
import random

import pytest
import sentencepiece
import transformers
from tokenizers import Tokenizer as RawTokenizer
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

from rlad_megatron.data.tokenizer import (PLAIN_PROMPT_TEMPLATE, HFTokenizer,
                                          SentencePieceTokenizer, check_same_vocab,
                                          load_tokenizer, render_plain_prompt)

SAMPLES = ["Janet has 3 apples.", "  two  spaces\nand a newline\tand a tab ",
           "Ünïcödé: 東京 😀 ∑ x^2 = 1/2", "<answer>42</answer>", ""]


def _mistral_file(name: str) -> str:
    path = importlib.metadata.distribution("mistral-common").locate_file(
        f"mistral_common/data/{name}")
    assert path.exists(), path
    return str(path)


@pytest.fixture(scope="module")
def mistral():
    return load_tokenizer(_mistral_file("tokenizer.model.v1"))


def _corpus(n: int = 400) -> list[str]:
    rng = random.Random(0)
    words = "janet has apples pears the quick brown fox jumps over lazy dog answer is".split()
    return [" ".join(rng.choice(words) for _ in range(8)) + f" {rng.randint(0, 999)}."
            for _ in range(n)]


@pytest.fixture(scope="module")
def trained_spm(tmp_path_factory):
    path = tmp_path_factory.mktemp("spm") / "tiny.model"
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus()), model_writer=model, vocab_size=400,
        model_type="bpe", byte_fallback=True, normalization_rule_name="identity",
        remove_extra_whitespaces=False, character_coverage=1.0, pad_id=3, minloglevel=2)
    path.write_bytes(model.getvalue())
    return path


def _byte_level_bpe() -> RawTokenizer:
    tok = RawTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(_corpus(), trainer)
    # like Llama's tokenizer.json: the raw library adds bos; the wrapper must not unless asked
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    return tok


@pytest.fixture(scope="module")
def hf_json(tmp_path_factory):
    path = tmp_path_factory.mktemp("hf") / "tokenizer.json"
    _byte_level_bpe().save(str(path))
    return path


CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory, hf_json):
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(hf_json), bos_token="<s>",
                                                eos_token="</s>", pad_token="<pad>")
    fast.chat_template = CHAT_TEMPLATE
    out = tmp_path_factory.mktemp("hfdir")
    fast.save_pretrained(str(out))
    return out


def test_mistral_pieces_ids_and_specials(mistral):
    assert isinstance(mistral, SentencePieceTokenizer)
    assert mistral.pieces("Janet has 3 apples.") == ["▁Jan", "et", "▁has", "▁", "3", "▁ap",
                                                      "ples", "."]
    assert mistral.encode("Janet has 3 apples.") == [2997, 299, 659, 28705, 28770, 979, 2815,
                                                      28723]
    assert (mistral.bos_id, mistral.eos_id, mistral.vocab_size) == (1, 2, 32000)
    assert mistral.pad_id == 2  # the model defines no pad (-1): eos stands in
    assert mistral.tokens()[:3] == ["<unk>", "<s>", "</s>"]


@pytest.mark.parametrize("which", ["mistral", "trained_spm", "hf_json", "hf_dir"])
def test_round_trip(which, request):
    tok = load_tokenizer(request.getfixturevalue(which)) if which != "mistral" \
        else request.getfixturevalue("mistral")
    for text in SAMPLES:
        assert tok.decode(tok.encode(text)) == text, (which, text)
    ids = tok.encode("Janet has 3 apples.")
    if tok.bos_id is not None:
        assert tok.encode("Janet has 3 apples.", add_bos=True) == [tok.bos_id] + ids
        assert tok.decode([tok.bos_id] + ids) == "Janet has 3 apples."


def test_trained_sentencepiece_specials(trained_spm):
    tok = load_tokenizer(trained_spm)
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.vocab_size) == (1, 2, 3, 400)
    assert tok.encode("fox", add_eos=True)[-1] == 2


def test_bare_tokenizer_json_has_no_specials_unless_given(hf_json):
    bare = load_tokenizer(hf_json)
    assert isinstance(bare, HFTokenizer)
    assert (bare.bos_id, bare.eos_id, bare.pad_id) == (None, None, None)
    with pytest.raises(ValueError, match="defines no bos"):
        bare.encode("x", add_bos=True)
    tok = load_tokenizer(hf_json, bos_token="<s>", eos_token="</s>")
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.vocab_size) == (0, 1, 1, 320)
    with pytest.raises(ValueError, match="'<bos>' is not in the vocabulary"):
        load_tokenizer(hf_json, bos_token="<bos>")


def test_hf_directory_specials_and_chat_template(hf_dir):
    tok = load_tokenizer(hf_dir)
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 2)
    assert tok.has_chat_template
    assert tok.render_prompt("2+2?") == "<|user|>2+2?\n<|assistant|>"
    assert tok.render_prompt("2+2?", system="Be brief.") == \
        "<|system|>Be brief.\n<|user|>2+2?\n<|assistant|>"
    ids = tok.encode_prompt("2+2?")
    assert ids[0] != tok.bos_id and tok.decode(ids) == "<|user|>2+2?\n<|assistant|>"
    ids = tok.encode_prompt("2+2?", prefill="<answer>")  # data.answer_prefill
    assert ids[0] != tok.bos_id and tok.decode(ids) == "<|user|>2+2?\n<|assistant|><answer>"


def test_chat_template_that_refuses_system_gets_it_in_the_user_turn(tmp_path, hf_json):
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(hf_json), eos_token="</s>")
    fast.chat_template = ("{% for m in messages %}{% if m.role == 'system' %}"
                          "{{ raise_exception('no system role') }}{% endif %}"
                          "[U]{{ m.content }}{% endfor %}[A]")
    fast.save_pretrained(str(tmp_path))
    assert load_tokenizer(tmp_path).render_prompt("q?", system="S") == "[U]S\n\nq?[A]"


def test_plain_template_and_bos(mistral):
    assert not mistral.has_chat_template
    text = mistral.render_prompt("2+2?", system="Be brief.")
    assert text == "Be brief.\n\nQuestion: 2+2?\nAnswer:" == render_plain_prompt("2+2?",
                                                                                  "Be brief.")
    assert mistral.render_prompt("2+2?") == PLAIN_PROMPT_TEMPLATE.format(question="2+2?")
    ids = mistral.encode_prompt("2+2?")
    assert ids[0] == 1 and ids[1:] == mistral.encode("Question: 2+2?\nAnswer:")
    ids = mistral.encode_prompt("2+2?", prefill=" <answer>")
    assert ids[0] == 1 and mistral.decode(ids) == "Question: 2+2?\nAnswer: <answer>"


def test_kind_is_detected_by_content(tmp_path, hf_json, trained_spm):
    (tmp_path / "hf.model").write_bytes(hf_json.read_bytes())
    (tmp_path / "spm.json").write_bytes(trained_spm.read_bytes())
    assert isinstance(load_tokenizer(tmp_path / "hf.model"), HFTokenizer)
    assert isinstance(load_tokenizer(tmp_path / "spm.json"), SentencePieceTokenizer)
    assert RawTokenizer.from_file(str(hf_json)).encode("fox").ids[0] == 0  # raw adds <s>
    assert load_tokenizer(hf_json).encode("fox")[0] != 0


def test_load_errors_name_the_path(tmp_path):
    missing = tmp_path / "nope.model"
    with pytest.raises(FileNotFoundError, match="nope.model"):
        load_tokenizer(missing)
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ValueError, match="garbage.bin"):
        load_tokenizer(garbage)
    not_tok = tmp_path / "config.json"
    not_tok.write_text('{"hidden_size": 8}')
    with pytest.raises(ValueError, match="config.json.*not a tokenizer.json"):
        load_tokenizer(not_tok)
    with pytest.raises(ValueError, match="has no tokenizer.json"):
        load_tokenizer(tmp_path)
    with pytest.raises(ValueError, match="defines its own special tokens"):
        load_tokenizer(_mistral_file("tokenizer.model.v1"), eos_token="</s>")


def test_same_vocab_accepted(mistral, hf_json, hf_dir):
    check_same_vocab(mistral, load_tokenizer(_mistral_file("tokenizer.model.v1")))
    check_same_vocab(load_tokenizer(hf_json), load_tokenizer(hf_dir))


def test_different_sizes_refused_with_first_differences(mistral):
    v3 = load_tokenizer(_mistral_file("mistral_instruct_tokenizer_240323.model.v3"))
    with pytest.raises(ValueError) as err:
        check_same_vocab(mistral, v3)
    msg = str(err.value)
    assert "tokenizer.model.v1" in msg and "tokenizer_240323.model.v3" in msg
    assert "size: 32000 (teacher) vs 32768 (student)" in msg
    assert "3: '<0x00>' vs '[INST]'" in msg and "4: '<0x01>' vs '[/INST]'" in msg


def test_same_size_swapped_tokens_refused(tmp_path, hf_json):
    raw = _byte_level_bpe()
    vocab = raw.get_vocab()
    a, b = "<pad>", "!"
    vocab[a], vocab[b] = vocab[b], vocab[a]
    swapped = RawTokenizer(models.WordLevel(vocab=vocab, unk_token="<s>"))
    swapped.save(str(tmp_path / "swapped.json"))
    with pytest.raises(ValueError) as err:
        check_same_vocab(load_tokenizer(hf_json), load_tokenizer(tmp_path / "swapped.json"),
                         label_a="A", label_b="B")
    msg = str(err.value)
    assert "size:" not in msg and "2 ids map to different tokens" in msg
    assert "2: '<pad>' vs '!'" in msg and f"{vocab[a]}: '!' vs '<pad>'" in msg
