"""sha256 digests of files, streamed so multi-GB checkpoints never sit in memory."""

from __future__ import annotations

import hashlib
from pathlib import Path

_CHUNK = 1 << 22


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def describe_files(root: Path, names: list[str] | None = None) -> dict[str, dict[str, str | int]]:
    """`{relative path: {"sha256", "size"}}` for `names` under root (default: every regular file, sorted)."""
    if names is None:
        names = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    return {name: {"sha256": sha256_file(root / name), "size": (root / name).stat().st_size} for name in names}
