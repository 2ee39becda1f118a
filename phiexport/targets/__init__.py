"""Device targets: each declares, as data, what its execution provider needs from a package.

The pipeline reads these declarations; no other stage checks target names.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    name: str
    execution_provider: str  # the genai builder's `-e` value, also written to genai_config.json
    precisions: tuple[str, ...]  # weight precisions this device runs
    static_shapes: bool  # True when every graph shape, KV cache included, must be fixed (NPUs)
    needs_calibration: bool  # True when activations are quantized with calibration data
    evaluated_on: str  # where phiexport checks its numerics on this machine
    description: str
    op_contract: str | None = None  # name of the operator list every graph must stay within (targets.op_contract)
    builder_options: tuple[tuple[str, str], ...] = ()  # genai builder options this device needs
    session_options: tuple[tuple[str, int | str], ...] = ()  # written into genai_config.json's decoder session
    imports_integers: bool = False  # carries a GGUF source's integers exactly (quantize/imported.py)


TARGETS: dict[str, Target] = {}


def register_target(target: Target) -> Target:
    if target.name in TARGETS:
        raise ValueError(f"target {target.name} registered twice")
    TARGETS[target.name] = target
    return target


from phiexport.targets import cpu, dml, npu  # noqa: E402,F401  (register themselves)
