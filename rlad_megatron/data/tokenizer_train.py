"""Train a small sentencepiece tokenizer from text, for models trained from scratch (the demo,
tests). A character model (model_type="char") suits arithmetic: digits never merge.

    path = train_sentencepiece(lines, "cache/chain_sum_char")   # -> cache/chain_sum_char.model
The special ids are fixed: <unk>=0, <s>=1, </s>=2, <pad>=3.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable


def train_sentencepiece(lines: Iterable[str], model_prefix: str | Path, *,
                        model_type: str = "char", vocab_size: int = 0) -> Path:
    """Train and write MODEL_PREFIX.model; vocab_size 0 = every character seen (+ 4 specials).
    The model file does not record where it was written (sentencepiece keeps model_prefix in its
    trainer spec): the same text gives the same bytes in any folder."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2

    lines = [line for line in lines if line]
    if not lines:
        raise ValueError("train_sentencepiece: no text to train on")
    chars = sorted({c for line in lines for c in line})
    size = vocab_size or len(chars) + 5  # + specials and the word-boundary piece
    prefix = Path(model_prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    # trained under a private name, then moved into place: a reader (another rank) never sees a
    # half-written model
    tmp = prefix.with_name(f".{prefix.name}_{os.getpid()}_tmp")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_prefix=str(tmp), model_type=model_type,
        vocab_size=size, character_coverage=1.0, hard_vocab_limit=False,
        unk_id=0, bos_id=1, eos_id=2, pad_id=3, add_dummy_prefix=False,
        split_digits=True, minloglevel=2)
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(tmp.with_suffix(".model").read_bytes())
    proto.trainer_spec.ClearField("model_prefix")
    tmp.with_suffix(".model").write_bytes(proto.SerializeToString())
    os.replace(tmp.with_suffix(".vocab"), prefix.with_suffix(".vocab"))
    os.replace(tmp.with_suffix(".model"), prefix.with_suffix(".model"))
    return prefix.with_suffix(".model")
