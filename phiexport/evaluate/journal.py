"""Append-only results of a long evaluation, one JSON line per scored item, so an interrupt loses nothing scored.

Each model under evaluation has its own file named after what it is (`model_key`); each line is keyed by what was
asked of it (`item_key`: the exact token ids and budget). A rerun of the same command, or of a larger one, reads the
file back and only computes what is missing. A torn last line (the process killed mid-write) is ignored.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def digest(*parts: Any) -> str:
    """A short, stable hash of JSON-serializable parts."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def item_key(kind: str, token_ids: Iterable[int], *settings: Any) -> str:
    return f"{kind}-{digest(list(token_ids), *settings)}"


class Journal:
    """The records one model produced, keyed by item; `record` is on disk (flushed and fsynced) when it returns."""

    def __init__(self, path: Path):
        self.path = path
        self.records: dict[str, dict[str, Any]] = {}
        if path.is_file():
            data = path.read_bytes()
            complete = data[: data.rfind(b"\n") + 1]
            if len(complete) != len(data):  # the line being written when the process was killed
                path.write_bytes(complete)
            for line in complete.decode("utf-8").splitlines():
                record = json.loads(line)
                self.records[record["key"]] = record
        path.parent.mkdir(parents=True, exist_ok=True)

    def __contains__(self, key: str) -> bool:
        return key in self.records

    def __getitem__(self, key: str) -> dict[str, Any]:
        return self.records[key]

    def record(self, key: str, **values: Any) -> None:
        entry = {"key": key, **values}
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry, separators=(",", ":")) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self.records[key] = entry
