"""Megatron calls that read its parallel_state globals stay out of the package outside runtime/
(style.md 5.2 rule 4; issue 27's traps), read from the source (no imports executed):

    parallel_state                  imported only under runtime/ (the one reader of the globals)
    vocab_parallel_cross_entropy    never: it reads the global TP group (wrong by ~1.2 for a
                                    teacher on its own groups); ops/ takes tp_group explicitly
    get_forward_backward_func       only in runtime/parallel.py, with pp_size and vp_size (it picks
                                    the schedule from the global PP size otherwise)

tests/dist*/**/test_teacher_layout.py check the same at run time: the teacher's pass runs with
the globals set to None. A failure names the file and line."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "rlad_megatron"


def _names(tree):
    """(line, name) of every imported or referenced name and attribute."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            yield node.lineno, node.module or ""
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.Attribute):
            yield node.lineno, node.attr
        elif isinstance(node, ast.Name):
            yield node.lineno, node.id


def _uses(name: str):
    for path in sorted(PACKAGE.rglob("*.py")):
        for line, found in _names(ast.parse(path.read_text())):
            if found == name or found.endswith("." + name):
                yield path.relative_to(PACKAGE).as_posix(), line


def test_parallel_state_is_read_only_under_runtime():
    outside = [f"{p}:{line}" for p, line in _uses("parallel_state") if not p.startswith("runtime/")]
    assert not outside, "megatron's parallel_state read outside runtime/: " + ", ".join(outside)


def test_megatrons_global_group_cross_entropy_is_never_used():
    found = [f"{p}:{line}" for p, line in _uses("vocab_parallel_cross_entropy")]
    assert not found, "use ops/ (explicit tp_group), not megatron's: " + ", ".join(found)


def test_the_schedule_is_chosen_from_the_layouts_own_sizes():
    found = list(_uses("get_forward_backward_func"))
    assert {p for p, _ in found} == {"runtime/parallel.py"}, found
    tree = ast.parse((PACKAGE / "runtime" / "parallel.py").read_text())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)
             and getattr(n.func, "id", getattr(n.func, "attr", "")) == "get_forward_backward_func"]
    assert calls and all({k.arg for k in c.keywords} >= {"pp_size", "vp_size"} for c in calls)
