"""Directories converted once from a source (a GGUF dequantized, a GPTQ/AWQ checkpoint widened to fp32) and kept by
the source's digest: a later build of the same source reuses them, and an interrupted one leaves nothing behind."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

_COMPLETE = ".complete"


def cached_copy(root: Path, key: str, write: Callable[[Path], None]) -> Path:
    """`root/key`, written by `write(directory)` into a staging folder first unless an earlier build completed it."""
    target = root / key[:32]
    if (target / _COMPLETE).is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".partial-", dir=root))
    try:
        write(staging)
        (staging / _COMPLETE).touch()
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def digest_of(files: dict[str, Any]) -> str:
    """One sha256 over a directory's file digests (digest.describe_files)."""
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
