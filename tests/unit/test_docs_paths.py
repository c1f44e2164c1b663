"""Every repository file the docs name in backquotes exists (issue 26: docs/conversion.md
pointed to a test fixture that had moved)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PATH = re.compile(r"`((?:tests|rlad_megatron|examples|tools|bench|slurm)/[\w/.\-]+"
                  r"\.(?:py|yaml|sh|md|json))`")


def test_the_files_the_docs_name_exist():
    docs = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]
    named = [(doc.name, m.group(1)) for doc in docs for m in PATH.finditer(doc.read_text())]
    assert len(named) > 20
    missing = [f"{doc}: {path}" for doc, path in named
               if not (ROOT / path).exists() and not re.search(r"[A-Z]{3,}", path)]  # NAME
    assert not missing, missing
