"""The run configuration's schema, read from its own dataclasses (config/run.py and the
sections other components own): each field's dotted key, type, default, allowed values and
docstring. `rlad train --help-config` prints it; `check_choices` refuses a value outside a
field's registry and `check_finite` a NaN or infinite float before any model is built;
tests/unit/config/test_schema.py holds that every field is documented.

Docstrings are the string literal under each field (the convention torchtitan's JobConfig uses);
Python does not keep them at run time, so they are read from the class source with `ast`.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import math
import textwrap
import typing
from dataclasses import dataclass
from typing import Any, Iterator, Optional

from rlad_megatron.config.run import RunConfig


@dataclass(frozen=True)
class FieldInfo:
    """One leaf of the schema."""

    key: str                      # dotted, e.g. "loss.trrd.alpha"
    type: str                     # as written, e.g. "Optional[float]"
    default: Any
    doc: Optional[str]            # None when the field has no docstring
    choices: Optional[tuple]      # allowed values (from a registry), None when free
    section: bool = False         # a nested dataclass (its fields follow)


@functools.lru_cache(maxsize=None)
def field_docs(cls: type) -> dict[str, str]:
    """{field name: docstring} of a dataclass, its bases' fields included (nearest class wins)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body
        for node, after in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                    and isinstance(after.value.value, str)):
                docs[node.target.id] = inspect.cleandoc(after.value.value)
    return docs


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def walk(cls: type = RunConfig, prefix: str = "") -> Iterator[FieldInfo]:
    """Every leaf field of a config dataclass, depth first, in declaration order; a field whose
    type is itself a dataclass is a section (its own docstring is reported with key `prefix`)."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind):
            yield FieldInfo(key, kind.__name__, None, docs.get(f.name), None, section=True)
            yield from walk(kind, key + ".")
            continue
        name = kind.__name__ if isinstance(kind, type) else str(kind).replace("typing.", "")
        yield FieldInfo(key, name, _default(f), docs.get(f.name), f.metadata.get("choices"))


def get(cfg, key: str):
    value = cfg
    for part in key.split("."):
        value = getattr(value, part)
    return value


def check_choices(cfg: RunConfig) -> None:
    """A ValueError naming the key, the value and the allowed values of the first field whose
    value is not among its registry's."""
    for info in walk(type(cfg)):
        if info.choices is not None and get(cfg, info.key) not in info.choices:
            raise ValueError(f"{info.key}: {get(cfg, info.key)!r} is not one of "
                             f"{', '.join(map(str, info.choices))}")


INF_ALLOWED = "math.inf"
"""A float field whose docstring names math.inf accepts +inf (never -inf or NaN)."""


def check_finite(cfg: RunConfig) -> None:
    """A ValueError naming the key and the value of the first float field holding NaN, -inf, or
    +inf where its docstring does not allow it (INF_ALLOWED): a NaN threshold compares false and
    would switch its gate off silently."""
    for info in walk(type(cfg)):
        value = get(cfg, info.key)
        if "float" not in info.type or not isinstance(value, float) or math.isfinite(value):
            continue
        if math.isnan(value) or value < 0 or INF_ALLOWED not in (info.doc or ""):
            raise ValueError(f"{info.key}: {value} is not a finite number")


def format_schema(cls: type = RunConfig) -> str:
    """The documented schema as text: sections as headings, each field with its type, default,
    allowed values and docstring."""
    lines = []
    for info in walk(cls):
        depth = info.key.count(".")
        pad = "  " * depth
        if info.section:
            lines += ["", f"{pad}{info.key}:  {info.doc or '(undocumented)'}"]
            continue
        allowed = f"  one of: {', '.join(map(str, info.choices))}" if info.choices else ""
        lines.append(f"{pad}{info.key} ({info.type}) = {info.default!r}{allowed}")
        for row in textwrap.wrap(info.doc or "(undocumented)", 96 - len(pad) - 4,
                                   break_on_hyphens=False):
            lines.append(f"{pad}    {row}")
    return "\n".join(lines).lstrip("\n") + "\n"

