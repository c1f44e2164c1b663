"""Tokenizers: one interface over sentencepiece `.model` files and Hugging Face tokenizers.

    tok = load_tokenizer(path)       # a sentencepiece .model, a tokenizer.json, or an HF directory
    ids = tok.encode("Janet has 3 apples.", add_bos=True)
    text = tok.decode(ids)
    prompt_ids = tok.encode_prompt(question, system=...)
    check_same_vocab(teacher_tok, student_tok)    # ValueError unless id -> token maps are identical

Kinds (chosen by content, not by file name):
  * a directory with tokenizer.json or tokenizer_config.json -> HF (transformers.AutoTokenizer,
    local files only): special tokens and the chat template come from the directory;
  * a directory with only tokenizer.model -> sentencepiece;
  * a file whose first non-blank byte is '{' -> HF tokenizer.json (tokenizers library format);
    it has no notion of bos/eos/pad, so pass their token strings to `load_tokenizer` if needed;
  * any other file -> sentencepiece, else ValueError naming the path.

Special ids: `bos_id`, `eos_id` are None when the tokenizer defines none. `pad_id` is the
tokenizer's pad, else eos (padded positions are masked out, so any valid id will do), else None.
`encode` never adds special tokens unless asked (HF post-processors are bypassed), so both kinds
behave the same.

Prompts: `render_prompt(question, system)` uses the HF chat template when the tokenizer has one
(user turn, plus a system turn if given; templates that refuse a system turn get the system text
prepended to the user turn), with the generation prompt appended. Otherwise it uses
PLAIN_PROMPT_TEMPLATE. `encode_prompt` encodes that string: a chat template writes its own
special tokens as text, so no bos is added; the plain template gets bos prepended when defined.
"""

from __future__ import annotations

import abc
import json
from pathlib import Path
from typing import Optional, Sequence

PLAIN_SYSTEM_TEMPLATE = "{system}\n\n"
PLAIN_PROMPT_TEMPLATE = "Question: {question}\nAnswer:"
"""Used when the tokenizer has no chat template: optional PLAIN_SYSTEM_TEMPLATE, then this."""


def render_plain_prompt(question: str, system: Optional[str] = None) -> str:
    """The documented plain template: '{system}\\n\\nQuestion: {question}\\nAnswer:'."""
    head = PLAIN_SYSTEM_TEMPLATE.format(system=system) if system else ""
    return head + PLAIN_PROMPT_TEMPLATE.format(question=question)


class Tokenizer(abc.ABC):
    """Common interface; subclasses set `name` (the path) and implement the abstract members."""

    name: str
    kind: str

    def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Token ids of `text`, with bos / eos added only when asked (ValueError if undefined)."""
        ids = self._encode(text)
        if add_bos:
            ids = [self._require(self.bos_id, "bos")] + ids
        if add_eos:
            ids = ids + [self._require(self.eos_id, "eos")]
        return ids

    @property
    def adds_bos(self) -> bool:
        """Whether this tokenizer's own encoding puts its bos token first by default (Hugging
        Face tokenizers may; sentencepiece's encode does not)."""
        return False

    def _require(self, token_id: Optional[int], what: str) -> int:
        if token_id is None:
            raise ValueError(f"tokenizer {self.name} defines no {what} token")
        return token_id

    @property
    def pad_id(self) -> Optional[int]:
        own = self._own_pad_id()
        return own if own is not None else self.eos_id

    @property
    def has_chat_template(self) -> bool:
        return False

    def render_prompt(self, question: str, system: Optional[str] = None) -> str:
        return render_plain_prompt(question, system)

    def encode_prompt(self, question: str, system: Optional[str] = None,
                      prefill: str = "") -> list[int]:
        """ids of render_prompt(...) + prefill (text opening the model's turn), bos first for
        the plain template (see module docstring)."""
        text = self.render_prompt(question, system) + prefill
        add_bos = not self.has_chat_template and self.bos_id is not None
        return self.encode(text, add_bos=add_bos)

    @abc.abstractmethod
    def tokens(self) -> list[Optional[str]]:
        """tokens()[i] is the token string of id i (None for an unused id)."""

    @abc.abstractmethod
    def _encode(self, text: str) -> list[int]: ...

    @abc.abstractmethod
    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str: ...

    @property
    @abc.abstractmethod
    def bos_id(self) -> Optional[int]: ...

    @property
    @abc.abstractmethod
    def eos_id(self) -> Optional[int]: ...

    @abc.abstractmethod
    def _own_pad_id(self) -> Optional[int]: ...

    @property
    @abc.abstractmethod
    def vocab_size(self) -> int:
        """Number of ids the tokenizer can produce (not the model's padded embedding size)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, vocab_size={self.vocab_size})"


class SentencePieceTokenizer(Tokenizer):
    """A sentencepiece `.model` file. Control tokens (bos/eos) are dropped by decode."""

    kind = "sentencepiece"

    def __init__(self, path: str | Path):
        import sentencepiece

        self.name = str(path)
        self._sp = sentencepiece.SentencePieceProcessor()
        try:
            self._sp.Load(str(path))
        except (OSError, RuntimeError) as e:
            raise ValueError(f"{path}: not a sentencepiece model nor a tokenizer.json ({e})") from e

    def _encode(self, text: str) -> list[int]:
        return list(self._sp.EncodeAsIds(text))

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        return self._sp.DecodeIds([int(i) for i in ids])

    def pieces(self, text: str) -> list[str]:
        return list(self._sp.EncodeAsPieces(text))

    @staticmethod
    def _opt(token_id: int) -> Optional[int]:
        return None if token_id < 0 else token_id

    @property
    def bos_id(self) -> Optional[int]:
        return self._opt(self._sp.bos_id())

    @property
    def eos_id(self) -> Optional[int]:
        return self._opt(self._sp.eos_id())

    def _own_pad_id(self) -> Optional[int]:
        return self._opt(self._sp.pad_id())

    @property
    def vocab_size(self) -> int:
        return self._sp.GetPieceSize()

    def tokens(self) -> list[Optional[str]]:
        return [self._sp.IdToPiece(i) for i in range(self.vocab_size)]


class HFTokenizer(Tokenizer):
    """A Hugging Face fast tokenizer, from a directory or a bare tokenizer.json file."""

    kind = "hf"

    def __init__(self, path: str | Path, *, bos_token: Optional[str] = None,
                 eos_token: Optional[str] = None, pad_token: Optional[str] = None):
        import transformers

        self.name = str(path)
        special = {k: v for k, v in (("bos_token", bos_token), ("eos_token", eos_token),
                                     ("pad_token", pad_token)) if v is not None}
        try:
            if Path(path).is_dir():
                self._tok = transformers.AutoTokenizer.from_pretrained(
                    str(path), local_files_only=True, trust_remote_code=False)
            else:
                self._tok = transformers.PreTrainedTokenizerFast(tokenizer_file=str(path))
        except Exception as e:  # transformers raises many types for a bad file
            raise ValueError(f"{path}: cannot load as a Hugging Face tokenizer ({e})") from e
        vocab = self._tok.get_vocab()
        for what, token in special.items():
            if token not in vocab:  # transformers would silently add it as a new id
                raise ValueError(f"{path}: {what} {token!r} is not in the vocabulary")
            setattr(self._tok, what, token)

    def _encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False))

    @property
    def adds_bos(self) -> bool:
        """Whether the tokenizer itself puts its bos token first (transformers' encode with
        special tokens, as the model's own pipeline does)."""
        bos = self.bos_id
        return bos is not None and self._tok.encode("a", add_special_tokens=True)[:1] == [bos]

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens,
                                clean_up_tokenization_spaces=False)

    @property
    def bos_id(self) -> Optional[int]:
        return self._tok.bos_token_id

    @property
    def eos_id(self) -> Optional[int]:
        return self._tok.eos_token_id

    def _own_pad_id(self) -> Optional[int]:
        return self._tok.pad_token_id

    @property
    def vocab_size(self) -> int:
        return len(self._tok)

    def tokens(self) -> list[Optional[str]]:
        vocab = self._tok.get_vocab()
        out: list[Optional[str]] = [None] * (max(vocab.values(), default=-1) + 1)
        for token, i in vocab.items():
            out[i] = token
        return out

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self._tok, "chat_template", None))

    def render_prompt(self, question: str, system: Optional[str] = None) -> str:
        if not self.has_chat_template:
            return render_plain_prompt(question, system)
        import jinja2

        user = [{"role": "user", "content": question}]
        if system is None:
            return self._apply(user)
        try:
            return self._apply([{"role": "system", "content": system}] + user)
        except jinja2.TemplateError:  # the template refuses a system turn (raise_exception)
            return self._apply([{"role": "user", "content": f"{system}\n\n{question}"}])

    def _apply(self, messages: list[dict]) -> str:
        return self._tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def load_tokenizer(path: str | Path, **special_tokens: Optional[str]) -> Tokenizer:
    """Load a sentencepiece or HF tokenizer from `path` (see the module docstring for the kinds).

    special_tokens (bos_token=, eos_token=, pad_token=) override or supply an HF tokenizer's
    special tokens; a sentencepiece model defines its own and refuses them.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"tokenizer path does not exist: {p}")
    kind = _detect_kind(p)
    if kind == "hf":
        return HFTokenizer(p, **special_tokens)
    if special_tokens:
        raise ValueError(f"{p}: a sentencepiece model defines its own special tokens; "
                         f"got {sorted(special_tokens)}")
    if p.is_dir():
        p = p / "tokenizer.model"
    return SentencePieceTokenizer(p)


def _detect_kind(p: Path) -> str:
    if p.is_dir():
        if (p / "tokenizer.json").is_file() or (p / "tokenizer_config.json").is_file():
            return "hf"
        if (p / "tokenizer.model").is_file():
            return "sentencepiece"
        raise ValueError(f"{p}: directory has no tokenizer.json, tokenizer_config.json "
                         f"or tokenizer.model")
    with open(p, "rb") as f:
        head = f.read(4096).lstrip()
    if head.startswith(b"{"):
        try:
            with open(p, encoding="utf-8") as f:
                doc = json.load(f)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{p}: looks like JSON but does not parse ({e})") from e
        if not isinstance(doc, dict) or "model" not in doc:
            raise ValueError(f"{p}: JSON file is not a tokenizer.json (no 'model' entry)")
        return "hf"
    return "sentencepiece"


def check_same_vocab(a: Tokenizer, b: Tokenizer, *, label_a: str = "teacher",
                     label_b: str = "student", max_listed: int = 5) -> None:
    """Raise ValueError unless `a` and `b` map every id to the same token string.

    Only the tokenizers are compared: the models' padded vocabulary sizes may differ. Special-token
    choices (bos/eos/pad) are not compared, since base and instruct models of one family often
    differ there while sharing the vocabulary. The message names both tokenizers and lists the
    first differing entries as 'id: token_a vs token_b' and any size difference.
    """
    ta, tb = a.tokens(), b.tokens()
    if ta == tb:
        return
    diffs = [i for i in range(min(len(ta), len(tb))) if ta[i] != tb[i]]
    lines = [f"{label_a} tokenizer {a.name} and {label_b} tokenizer {b.name} differ:"]
    if len(ta) != len(tb):
        lines.append(f"  size: {len(ta)} ({label_a}) vs {len(tb)} ({label_b})")
    if diffs:
        lines.append(f"  {len(diffs)} ids map to different tokens; first ones "
                     f"(id: {label_a} vs {label_b}):")
        lines += [f"    {i}: {ta[i]!r} vs {tb[i]!r}" for i in diffs[:max_listed]]
    raise ValueError("\n".join(lines))
