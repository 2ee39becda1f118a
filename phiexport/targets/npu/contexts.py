"""HTP context binaries of the body parts, per SoC: each part's pair sharing weights (what a device loads) and each
graph compiled on its own (what the x86 simulator loads)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from phiexport.errors import BuildError
from phiexport.export.body_parts import BODY_KINDS, BodyPart
from phiexport.memory import release_freed_memory


def compile_for_soc(
    parts: list[BodyPart], package_dir: Path, separate_dir: Path, soc_name: str, *, track: Any
) -> tuple[dict[str, Any], dict[str, Path]]:
    """Per part, its prefill and decode graphs into one weight-sharing context binary in `package_dir/<soc>/`, and
    each compiled on its own into `separate_dir`: that measures the sharing, and unlike the shared binary
    (docs/npu.md) those binaries load on the x86 simulator. One part at a time, so the compile's memory is a part's.
    When `separate_dir` lies inside the package, the manifest record names them under `simulator`.

    Returns the manifest record and the separately compiled `*_ctx.onnx` per og stage.
    """
    from phiexport.targets.htp import compile_context_binary, compile_shared_context, soc

    target = soc(soc_name)
    soc_dir = package_dir / soc_name
    separate_dir.mkdir(parents=True, exist_ok=True)
    records: list[dict[str, Any]] = []
    separate: dict[str, Path] = {}
    for part in track(parts, len(parts), "context binaries"):
        bodies = [package_dir / part.graph_file(kind) for kind in BODY_KINDS]
        try:
            shared = compile_shared_context(bodies, soc_dir, target)[0]  # the compiling sessions closed at once
        except Exception as exc:  # onnxruntime raises its own types; the message names the node that did not fit
            raise BuildError(
                f"body part {part.index} does not compile for the HTP ({soc_name}): {exc}", "report this model"
            ) from exc
        alone = {
            kind: compile_context_binary(body, separate_dir / f"{body.stem}_ctx.onnx", target)
            for kind, body in zip(BODY_KINDS, bodies, strict=True)
        }
        separate |= {part.stage(kind): path for kind, path in alone.items()}
        prefix = f"body{part.index}_"
        record: dict[str, Any] = {
            "layers": [part.first, part.stop],
            **{kind: str(path.relative_to(package_dir)) for kind, path in zip(BODY_KINDS, shared, strict=True)},
            "shared_bytes": sum(item.stat().st_size for item in soc_dir.glob(f"{prefix}*.bin")),
            "separate_bytes": sum(item.stat().st_size for item in separate_dir.glob(f"{prefix}*.bin")),
        }
        if separate_dir.is_relative_to(package_dir):
            record["simulator"] = {kind: str(path.relative_to(package_dir)) for kind, path in alone.items()}
        records.append(record)
        release_freed_memory()
    return {
        "soc_model": target.soc_model,
        "htp_arch": target.htp_arch,
        "chip": target.chip,
        "weight_sharing": True,
        "parts": records,
    }, separate
