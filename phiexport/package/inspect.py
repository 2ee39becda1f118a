"""What `phiexport inspect` shows: the manifest's essentials, op-type counts per graph, file sizes."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from phiexport.errors import UsageError
from phiexport.package.manifest import MANIFEST_NAME, read_manifest


def summarize_package(package_dir: Path) -> dict[str, Any]:
    import onnx

    if not (package_dir / MANIFEST_NAME).is_file():
        raise UsageError(
            f"{package_dir} is not a phiexport package (no {MANIFEST_NAME})",
            "pass a package directory written by phiexport build, e.g. packages/<name>/cpu",
        )
    manifest = read_manifest(package_dir)
    graphs = {}
    for model in sorted(package_dir.glob("*.onnx")):
        nodes = onnx.load(model, load_external_data=False).graph.node
        graphs[model.name] = dict(
            Counter(f"{n.domain + '.' if n.domain else ''}{n.op_type}" for n in nodes).most_common()
        )
    files = {name: info["size"] for name, info in manifest["files"].items()}
    report = package_dir / "report.json"
    return {
        "package": str(package_dir),
        "target": manifest["target"],
        "source": {k: manifest["source"][k] for k in ("kind", "origin", "revision", "architecture")},
        "weights": manifest["weights"],
        "recipe": manifest["recipe"]["name"],
        "phiexport": manifest["phiexport"],
        "dependencies": manifest["dependencies"],
        "graphs": graphs,
        "files": files,
        "total_bytes": sum(files.values()),
        "metrics": _read_metrics(report) if report.is_file() else None,
    }


def _read_metrics(report: Path) -> dict[str, Any]:
    import json

    metrics: dict[str, Any] = json.loads(report.read_text(encoding="utf-8"))["metrics"]
    return metrics
