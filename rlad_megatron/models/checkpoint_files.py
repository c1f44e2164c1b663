"""The files of a checkpoint iteration: their manifest (rlad_manifest.json: every file's size and
sha256), its verification before anything loads them, and a failed write explained (a full disk
named as such, instead of the writer's "unexpected pos 704 vs 598").

The sha256 digests are taken right after the files are written (models/checkpoint.py `save`),
spread over the ranks (each hashes a share, rank 0 gathers them), so a shard whose bytes changed
but whose size did not (a bad copy, a flipped sector) is caught by `verify` before torch
unpickles it. Manifests written before digests existed verify by size alone.
"""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
from pathlib import Path
from typing import Optional

MANIFEST = "rlad_manifest.json"
_CHUNK = 8 << 20
LOW_SPACE_BYTES = 64 << 20
"""A failed write with less than this free on the checkpoint's disk is reported as a full disk."""


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def file_names(folder: Path) -> list[str]:
    """Every file under `folder` but the manifest, as sorted relative paths."""
    return sorted(str(f.relative_to(folder)) for f in folder.rglob("*")
                  if f.is_file() and f.name != MANIFEST)


def digests(folder: Path, rank: int = 0, world: int = 1) -> dict[str, str]:
    """sha256 of this rank's share of the files (every world-th, from rank)."""
    return {name: sha256(folder / name) for name in file_names(folder)[rank::world]}


def write_manifest(folder: Path, known: Optional[dict[str, str]] = None) -> None:
    """rlad_manifest.json: every file under `folder` (relative path) -> its size and sha256
    (`known` digests are reused, the rest computed here)."""
    names = file_names(folder)
    known = known or {}
    sums = {n: known[n] if n in known else sha256(folder / n) for n in names}
    sizes = {n: (folder / n).stat().st_size for n in names}
    (folder / MANIFEST).write_text(json.dumps({"files": sizes, "sha256": sums}, indent=1))


def verify(folder: str | Path, required: tuple[str, ...] = (), checksums: bool = True
           ) -> Optional[str]:
    """None when the iteration folder is complete and intact, else what is wrong with it, naming
    the file: missing, of another size, or (with `checksums`) of other contents than the manifest
    records. Without a manifest, the `required` files must exist."""
    folder = Path(folder)
    if not folder.is_dir():
        return f"{folder} does not exist"
    manifest = folder / MANIFEST
    if not manifest.exists():  # written before manifests
        missing = [folder / f for f in required if not (folder / f).exists()]
        return f"{missing[0]} is missing" if missing else None
    try:
        recorded = json.loads(manifest.read_text())
        sizes, sums = recorded["files"], recorded.get("sha256", {}) if checksums else {}
    except (ValueError, KeyError, TypeError, AttributeError):
        return f"{manifest} is not a readable manifest"
    for name, size in sizes.items():
        f = folder / name
        if not f.exists():
            return f"{f} is missing"
        if f.stat().st_size != size:
            return f"{f} has {f.stat().st_size} bytes, the manifest says {size} (truncated or " \
                   f"overwritten)"
    for name, digest in sums.items():
        if sha256(folder / name) != digest:
            return f"{folder / name} has the right size but not the contents the manifest " \
                   f"records (sha256 differs: corrupted or overwritten)"
    return None


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        failures = getattr(exc, "failures", None)  # torch's CheckpointException: rank -> error
        if isinstance(failures, dict):
            for inner in failures.values():
                inner = inner[0] if isinstance(inner, tuple) else inner  # (error, stack)
                if isinstance(inner, BaseException):
                    yield from _chain(inner)
        exc = exc.__cause__ or exc.__context__


def disk_full(folder: Path, exc: BaseException) -> Optional[str]:
    """'no space left on device ...' naming the folder and the free space when writing `folder`
    failed for want of space (ENOSPC anywhere in the error's chain, or almost nothing left free
    on its disk: torch's writer reports a short write as "unexpected pos"); None otherwise."""
    enospc = any(isinstance(e, OSError) and e.errno == errno.ENOSPC or
                 "No space left on device" in str(e) for e in _chain(exc))
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        free = None
    if not enospc and (free is None or free >= LOW_SPACE_BYTES):
        return None
    left = f"{free / 2**20:.1f} MiB free" if free is not None else "free space unknown"
    return (f"no space left on device writing the checkpoint {folder} ({left} on its disk); "
            f"free some space or set checkpoint.dir elsewhere, then relaunch to resume from the "
            f"last complete checkpoint")
