"""A local Hugging Face Hub cache built from a model directory, so Hub-id code runs with HF_HUB_OFFLINE=1."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path


def make_hub_cache(source: Path, cache_dir: Path, repo_id: str, commit: str, refs: tuple[str, ...] = ("main",)) -> Path:
    """Lay `source` out as huggingface_hub's cache (blobs, snapshots/<commit>, refs/<name>); returns the snapshot.

    Blob names follow the Hub (git blob sha1, or sha256 for LFS weights); huggingface_hub does not check them.
    """
    repo_dir = cache_dir / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / commit
    (repo_dir / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for file in sorted(p for p in source.iterdir() if p.is_file()):
        data = file.read_bytes()
        if file.suffix == ".safetensors":
            blob_name = hashlib.sha256(data).hexdigest()
        else:
            blob_name = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        blob = repo_dir / "blobs" / blob_name
        shutil.copyfile(file, blob)
        (snapshot / file.name).symlink_to(os.path.relpath(blob, snapshot))
    for ref in refs:
        (repo_dir / "refs").mkdir(exist_ok=True)
        (repo_dir / "refs" / ref).write_text(commit)  # no trailing newline: huggingface_hub does not strip it
    return snapshot
