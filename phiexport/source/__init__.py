"""Source stage: find the checkpoint, check it is safe and supported, and hand the builder an HF directory."""

from phiexport.source.checkpoint import Checkpoint
from phiexport.source.resolve import resolve_source

__all__ = ["Checkpoint", "resolve_source"]
