"""manifest.json: what a package contains and exactly how it was made."""

from __future__ import annotations

import json
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from phiexport import __version__
from phiexport.digest import describe_files
from phiexport.errors import UsageError
from phiexport.recipe import Recipe
from phiexport.source import Checkpoint
from phiexport.targets import Target

MANIFEST_SCHEMA = "phiexport.manifest/1"
MANIFEST_NAME = "manifest.json"
DEPENDENCIES = (
    "onnxruntime",
    "onnxruntime-genai",
    "onnxruntime-qnn",
    "onnx",
    "onnx-ir",
    "transformers",
    "torch",
    "gguf",
    "safetensors",
    "huggingface_hub",
)


def dependency_versions() -> dict[str, str]:
    versions = {}
    for name in DEPENDENCIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def write_manifest(
    package_dir: Path, *, recipe: Recipe, checkpoint: Checkpoint, target: Target, weights: dict[str, Any]
) -> dict[str, Any]:
    """Write manifest.json last, digesting every other file in the package."""
    manifest = {
        "schema": MANIFEST_SCHEMA,
        "phiexport": __version__,
        "dependencies": dependency_versions(),
        "target": {"name": target.name, "execution_provider": target.execution_provider},
        "recipe": recipe.model_dump(mode="json"),
        "source": {
            "kind": checkpoint.kind,
            "origin": checkpoint.origin,
            "revision": checkpoint.revision,
            "architecture": checkpoint.architecture.model_type,
            "files": checkpoint.files,
        },
        "weights": weights,
        "files": describe_files(package_dir),
    }
    (package_dir / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def read_manifest(package_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((package_dir / MANIFEST_NAME).read_text(encoding="utf-8"))
    return data


def package_dirs(paths: Sequence[Path]) -> list[Path]:
    """Package folders named by `paths`, a build output standing for every package inside it."""
    found = []
    for path in paths:
        if (path / MANIFEST_NAME).is_file():
            found.append(path)
        elif path.is_dir() and (inner := sorted(p.parent for p in path.glob(f"*/{MANIFEST_NAME}"))):
            found.extend(inner)
        else:
            raise UsageError(
                f"{path} is not a phiexport package (no {MANIFEST_NAME})",
                "pass package folders such as packages/<recipe>/cpu, or a build output such as packages/<recipe>",
            )
    return found
