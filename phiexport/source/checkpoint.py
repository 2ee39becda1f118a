"""What the later stages get from the source stage."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from phiexport.architectures import Architecture

SourceKind = Literal["hf_dir", "gguf", "hub"]


@dataclass(frozen=True)
class Checkpoint:
    """A checked Hugging Face directory (config.json, weights, tokenizer) ready for export and for the reference.

    `files` digests what the user supplied (the GGUF file, the Hub snapshot or the local directory), so the
    manifest can name the exact input even when `path` is a dequantized copy (of `prequantized`).
    """

    path: Path
    kind: SourceKind
    origin: str
    revision: str | None
    config: dict[str, Any]
    architecture: Architecture
    files: dict[str, dict[str, str | int]]
    prequantized: Path | None = None  # the GGUF file or GPTQ/AWQ directory `path` was dequantized from
