"""Runners for packages whose graphs phiexport drives itself (static-shape NPU pipelines)."""
