"""How a prompt item becomes model text, what a gold solution looks like, and how a completion is
read back for the reward.

  chat     the tokenizer's chat template (or the plain template) around the question; solutions
           end in <answer>...</answer>, which the rewards extract (data/rewards.py). For real
           instruction-tuned models.
  compact  short prompts and procedural solutions for tiny models trained from scratch on CPU
           (the demo): chain_sum "3+4-2=" -> "3+4=7,7-2=5#5". The part after '#' is the answer;
           `to_reward_text` wraps it in <answer> tags so the task's own scorer (through
           data/rewards.py) still decides the reward, but only when every step of the chain is
           right and uses the prompt's terms in order. Outcome reward alone reinforces lucky
           answers reached through wrong steps (about 20% of a weak student's correct samples
           in the feasibility study); a wrong step therefore gets no <answer> and scores 0.
           knights_knaves (n people, lettered A, B, C, ...): "A:(Ak=Bk);B:Ak;C:(Bk=An)?" with
           Xk = "X is a knight", Xn = "X is a knave", ~ & | > = for not, and, or, implies, iff;
           the solution tries every assignment in order and writes each statement's truth value,
           '!' marking the consistent one: "kkk:TTF,kkn:TTT!,...#kkn". The step check
           requires exactly that chain; the answer code is mapped back to reasoning-gym's
           sentence ("Ann is a knight, Bob is a knave, and ...") for its own scorer.

  answer_prefill (chat): data.answer_prefill, e.g. "<answer>", opens the model's turn, after the
           rendered prompt; the reward reads prefill + completion. For models that do not write
           the reward's answer format on their own (docs/own_model.md).

`steps_ok(completion, item)` (compact format) says whether a completion's whole chain is right:
evaluation reports it as its own row next to the configured (outcome) reward.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Callable, Optional

from rlad_megatron.data.miniature.compact import (COMPACT_TASKS, compact_prompt,
                                                  compact_reward_text, compact_solution,
                                                  compact_steps_ok)
from rlad_megatron.data.tasks import PromptItem

__all__ = ["COMPACT_TASKS", "FORMATS", "PromptFormat", "compact_steps_ok", "encode_prompt",
           "get_format"]

@dataclass(frozen=True)
class PromptFormat:
    name: str
    prompt: Callable[[PromptItem], str]
    """item -> the text the model is conditioned on (before the tokenizer's template)."""
    solution: Callable[[PromptItem], str]
    """item -> a gold completion (SFT targets)."""
    to_reward_text: Callable[[str, PromptItem], str]
    """(completion, item) -> the text handed to the reward function."""
    use_chat_template: bool
    steps_ok: Optional[Callable[[str, PromptItem], bool]] = None
    """(completion, item) -> whether every step of the chain is right; None: not checkable."""
    prefill: str = ""
    """chat: text that opens the model's turn after the rendered prompt (data.answer_prefill):
    the model continues from it; to_reward_text puts it back in front of the completion."""


FORMATS = {
    "chat": PromptFormat("chat", lambda item: item.question,
                         lambda item: f"<answer>{item.answer}</answer>", lambda c, item: c, True),
    "compact": PromptFormat("compact", compact_prompt, compact_solution, compact_reward_text,
                            False, compact_steps_ok),
}


def _prefilled_solution(item: PromptItem, prefill: str) -> str:
    gold = FORMATS["chat"].solution(item)
    if not gold.startswith(prefill):
        raise ValueError(f"data.answer_prefill: {prefill!r} does not begin the gold solution "
                         f"{gold[:40]!r}, so it has no gold continuation to train on")
    return gold[len(prefill):]


def get_format(name: str, *, check_steps: bool = True, answer_prefill: str = "") -> PromptFormat:
    """The named format; check_steps=False lets the compact format pass any completion's answer
    to the reward (outcome reward only). answer_prefill (chat only): the model's turn opens with
    it (encode_prompt); the reward reads answer_prefill + completion, and the gold solution
    (sft) is what follows it."""
    if name not in FORMATS:
        raise ValueError(f"data.format: {name!r} is not one of {', '.join(FORMATS)}")
    fmt = FORMATS[name]
    if name == "compact" and not check_steps:
        fmt = dataclasses.replace(fmt, to_reward_text=functools.partial(
            compact_reward_text, check_steps=False))
    if answer_prefill:
        if not fmt.use_chat_template:
            raise ValueError(f"data.answer_prefill needs data.format=chat, not {name}")
        fmt = dataclasses.replace(
            fmt, prefill=answer_prefill,
            solution=functools.partial(_prefilled_solution, prefill=answer_prefill),
            to_reward_text=lambda completion, item: answer_prefill + completion)
    return fmt


def encode_prompt(fmt: PromptFormat, tokenizer, item: PromptItem,
                  system: Optional[str] = None) -> list[int]:
    """Prompt token ids: the chat/plain template for `chat` (followed by the prefill, encoded as
    one text), bos + raw text for `compact`."""
    if fmt.use_chat_template:
        return tokenizer.encode_prompt(fmt.prompt(item), system, prefill=fmt.prefill)
    ids = tokenizer.encode(fmt.prompt(item))
    return ([tokenizer.bos_id] if tokenizer.bos_id is not None else []) + ids
