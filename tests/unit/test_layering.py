"""The import direction of style.md 5.1, read from the source (no imports executed).

    losses/  torch (not torch.distributed), the standard library, rlad_megatron.losses
    ops/     torch and torch.distributed, the standard library, rlad_megatron.ops
    data/    anything except megatron, torch.distributed and the rlad folders that need a
             process group or a model (runtime, models, ops, rollout, train, convert, launch)

A failure names the file, the line and the import: move the code to the folder that may import
it, or pass the value in instead of importing its producer.
"""

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "rlad_megatron"
STDLIB = set(sys.stdlib_module_names) | {"__future__"}
HEAVY_RLAD = ("runtime", "models", "ops", "rollout", "train", "convert", "launch", "reproduce",
              "cli")


def imported_modules(source: str, module: str):
    """(line, dotted name) of every import in `source`, relative ones resolved from `module`."""
    package = module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            yield node.lineno, base
            for alias in node.names:  # `from torch import distributed` is torch.distributed
                yield node.lineno, f"{base}.{alias.name}"


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def losses_rule(name: str) -> bool:
    if _under(name, "torch"):
        return not _under(name, "torch.distributed")
    return name.split(".")[0] in STDLIB or _under(name, "rlad_megatron.losses")


def ops_rule(name: str) -> bool:
    return (_under(name, "torch") or name.split(".")[0] in STDLIB
            or _under(name, "rlad_megatron.ops"))


def data_rule(name: str) -> bool:
    banned = ["megatron", "torch.distributed", *(f"rlad_megatron.{f}" for f in HEAVY_RLAD)]
    return not any(_under(name, b) for b in banned)


RULES = {"losses": losses_rule, "ops": ops_rule, "data": data_rule}


def violations(folder: Path, rule, package: str):
    for path in sorted(folder.rglob("*.py")):
        rel = path.relative_to(folder).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        module = ".".join([package, *parts]) + (".__init__" if rel.name == "__init__" else "")
        for line, name in imported_modules(path.read_text(), module):
            if not rule(name):
                yield f"{path.relative_to(folder.parent)}:{line} imports {name}"


def test_losses_ops_and_data_import_only_what_their_row_allows():
    found = [v for folder, rule in RULES.items()
             for v in violations(PACKAGE / folder, rule, f"rlad_megatron.{folder}")]
    assert not found, "import direction broken:\n" + "\n".join(found)


def test_checker_catches_forbidden_imports(tmp_path):
    """The rule must be able to fail: each of these lines alone is a violation."""
    bad = {
        "losses": ["import torch.distributed as dist", "from torch import distributed",
                   "from megatron.core import parallel_state", "import numpy",
                   "from rlad_megatron.data.batch import TrainBatch", "from ..ops import x"],
        "data": ["from megatron.core import mpu", "import torch.distributed",
                 "from rlad_megatron.runtime import init_parallel", "from ..models import build"],
        "ops": ["import megatron.core", "from rlad_megatron.models import spec"],
    }
    for folder, lines in bad.items():
        for i, line in enumerate(lines):
            d = tmp_path / f"{folder}{i}" / folder
            d.mkdir(parents=True)
            (d / "mod.py").write_text(f"def f():\n    {line}\n")
            assert list(violations(d, RULES[folder], f"rlad_megatron.{folder}")), line
    ok = tmp_path / "ok" / "losses"
    ok.mkdir(parents=True)
    (ok / "mod.py").write_text("import math\nimport torch\nfrom torch import Tensor\n"
                               "from . import aggregate\nfrom .kl import k1\n")
    assert not list(violations(ok, RULES["losses"], "rlad_megatron.losses"))
