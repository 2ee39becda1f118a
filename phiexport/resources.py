"""Data that ships with phiexport: bundled recipes, calibration and evaluation text."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def data_dir(name: str) -> Path:
    """`recipes`, `calibration` or `evaluation`: inside the wheel (`phiexport/_data/`) or in a source checkout."""
    for candidate in (_PACKAGE / "_data" / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"phiexport data folder {name!r} is missing from this installation; reinstall phiexport")
