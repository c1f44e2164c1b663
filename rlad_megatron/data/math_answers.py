"""Answers in text: extraction from completions and math answer equivalence, parsed, never run.

Extraction (`extract_answer`): the content of the LAST complete <answer>...</answer> pair
(stripped); if there is none, the content of the last \\boxed{...} (braces matched); else None.

Equivalence (`math_equal(pred, gold)`), in order:
  1. Either side longer than MAX_ANSWER_CHARS -> False.
  2. Plain numbers are compared exactly as rationals (`parse_number`): integers, decimals,
     thousands commas ('1,000'), a/b, \\frac{a}{b} (also \\dfrac, \\tfrac, \\frac12), after
     removing $ delimiters, \\(...\\), a whole-string \\boxed{...} and LaTeX thin spaces.
     So '42.0' == '42', '0.5' == '1/2' == '\\frac{1}{2}', but '0.333' != '1/3' (exact, no rounding).
     A percentage '50%' / '50\\%' against a numeric gold matches 50 or 0.5.
  3. Anything else goes to math-verify as LaTeX ($...$): latex2sympy2 builds sympy objects with an
     ANTLR grammar, so model text is parsed and never evaluated as Python (math-verify's plain
     expression extractor, which calls sympy.parse_expr -> eval, is deliberately not used).
     The whole parse + compare runs under `time_limit(timeout_s)`; on timeout the answer is wrong.

The time limit uses SIGALRM (interrupting pure-Python sympy work such as 9^{9^{9^9}} or
(10^{10^6})!), so step 3 must run in the main thread; elsewhere it raises RuntimeError. An outer
ITIMER_REAL timer (e.g. pytest-timeout) is restored afterwards, less the time spent.
"""

from __future__ import annotations

import logging
import re
import signal
import threading
import time
from contextlib import contextmanager
from fractions import Fraction
from typing import Iterator, Optional

MAX_ANSWER_CHARS = 500
DEFAULT_TIMEOUT_S = 1.0

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_BOXED = re.compile(r"\\boxed\s*\{")


def extract_answer(completion: str) -> Optional[str]:
    """Last <answer>...</answer> content, else last \\boxed{...} content, else None."""
    matches = _ANSWER_TAG.findall(completion)
    if matches:
        return matches[-1].strip()
    return last_boxed(completion)


def last_boxed(text: str) -> Optional[str]:
    """Content of the last \\boxed{...} whose braces close, stripped; None if there is none."""
    for m in reversed(list(_BOXED.finditer(text))):
        depth = 1
        for i in range(m.end(), len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                return text[m.end():i].strip()
    return None


_THIN_SPACES = re.compile(r"\\[,!;: ]|~")
_DECIMAL = re.compile(r"[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|[+-]?\.\d+")
_SLASH = re.compile(r"([+-]?\d+)\s*/\s*(\d+)")
_LATEX_FRAC = re.compile(r"([+-]?)\\[dt]?frac(?:\{\s*([+-]?\d+)\s*\}\{\s*(\d+)\s*\}|(\d)(\d))")
_PERCENT = re.compile(r"(.*?)\s*\\?%")
_WHOLE_BOXED = re.compile(r"\\boxed\s*\{(.*)\}", re.DOTALL)


def _balanced(text: str) -> bool:
    depth = 0
    for ch in text:
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if depth < 0:
            return False
    return depth == 0


def _strip_wrappers(text: str) -> str:
    s = text.strip().replace("\\$", "").replace("$", "")
    s = _THIN_SPACES.sub("", s).strip()
    if s.startswith("\\(") and s.endswith("\\)"):
        s = s[2:-2].strip()
    m = _WHOLE_BOXED.fullmatch(s)
    if m and _balanced(m.group(1)):
        s = m.group(1).strip()
    return s


def parse_number(text: str) -> Optional[Fraction]:
    """Exact value of a plain number ('-1,000.50', '3/4', '\\frac{3}{4}', '$42$'), else None."""
    s = _strip_wrappers(text)
    if _DECIMAL.fullmatch(s):
        return Fraction(s.replace(",", ""))
    m = _SLASH.fullmatch(s)
    if m:
        num, den = int(m.group(1)), int(m.group(2))
        return Fraction(num, den) if den else None
    m = _LATEX_FRAC.fullmatch(s)
    if m:
        num, den = (m.group(2), m.group(3)) if m.group(2) is not None else (m.group(4), m.group(5))
        if int(den) == 0:
            return None
        value = Fraction(int(num), int(den))
        return -value if m.group(1) == "-" else value
    return None


def math_equal(pred: str, gold: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
    """True when `pred` and `gold` denote the same mathematical answer (see module docstring)."""
    if not pred or not gold or len(pred) > MAX_ANSWER_CHARS or len(gold) > MAX_ANSWER_CHARS:
        return False
    gold_num, pred_num = parse_number(gold), parse_number(pred)
    if gold_num is not None and pred_num is not None:
        return gold_num == pred_num
    if gold_num is not None:
        m = _PERCENT.fullmatch(_strip_wrappers(pred))
        percent = parse_number(m.group(1)) if m else None
        if percent is not None:
            return gold_num in (percent, percent / 100)
    return _symbolic_equal(pred, gold, timeout_s)


class _TimeLimitExceeded(BaseException):
    """BaseException, so that libraries' `except Exception` blocks do not swallow it."""


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise _TimeLimitExceeded inside the block after `seconds` of wall time (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("math answer checking uses SIGALRM for its time limit and must run in "
                           "the main thread")

    def on_alarm(signum, frame):
        raise _TimeLimitExceeded()

    previous_handler = signal.signal(signal.SIGALRM, on_alarm)
    previous_delay, previous_interval = signal.setitimer(signal.ITIMER_REAL, seconds)
    start = time.monotonic()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous_handler)
        if previous_delay > 0:
            remaining = max(previous_delay - (time.monotonic() - start), 1e-3)
            signal.setitimer(signal.ITIMER_REAL, remaining, previous_interval)


class _DropTimeoutDisabledWarning(logging.Filter):
    """math-verify warns when its own alarm is off; time_limit provides the limit instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Timeout is disabled")


_MATH_VERIFY_READY = False


def _math_verify():
    global _MATH_VERIFY_READY
    import math_verify

    if not _MATH_VERIFY_READY:
        for name in ("math_verify.parser", "math_verify.grader"):
            logging.getLogger(name).addFilter(_DropTimeoutDisabledWarning())
        # first calls load the LaTeX grammar and sympy caches; keep that outside the time limit
        config = [math_verify.LatexExtractionConfig()]
        math_verify.verify(math_verify.parse("$\\frac{1}{2}x$", config, parsing_timeout=None),
                           math_verify.parse("$0.5 x$", config, parsing_timeout=None),
                           timeout_seconds=None)
        _MATH_VERIFY_READY = True
    return math_verify


def _as_latex(text: str) -> str:
    return "$" + text.replace("\\$", "").replace("$", "").strip() + "$"


def _symbolic_equal(pred: str, gold: str, timeout_s: float) -> bool:
    mv = _math_verify()
    config = [mv.LatexExtractionConfig()]
    try:
        with time_limit(timeout_s):
            gold_parsed = mv.parse(_as_latex(gold), config, parsing_timeout=None)
            pred_parsed = mv.parse(_as_latex(pred), config, parsing_timeout=None)
            if not gold_parsed or not pred_parsed:
                return False
            return bool(mv.verify(gold_parsed, pred_parsed, timeout_seconds=None))
    except _TimeLimitExceeded:
        return False
