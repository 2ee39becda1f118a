"""What a device target is, as data: what its execution provider needs from a package, and the module that builds
the package (`builder`), loaded only when a build runs."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType


@dataclass(frozen=True)
class Target:
    name: str
    execution_provider: str  # the genai builder's `-e` value, also written to genai_config.json
    precisions: tuple[str, ...]  # weight precisions this device runs
    static_shapes: bool  # True when every graph shape, KV cache included, must be fixed (NPUs)
    needs_calibration: bool  # True when activations are quantized with calibration data
    evaluated_on: str  # where phiexport checks its numerics on this machine
    description: str
    builder: str  # the module building the package: check, wants_prepared, build, cache_limit, seal (targets/job.py)
    op_contract: str | None = None  # name of the operator list every graph must stay within (targets.op_contract)
    builder_options: tuple[tuple[str, str], ...] = ()  # genai builder options this device needs
    session_options: tuple[tuple[str, int | str], ...] = ()  # written into genai_config.json's decoder session
    imports_integers: bool = False  # carries a GGUF source's integers exactly (quantize/imported.py)

    def package_builder(self) -> ModuleType:
        return importlib.import_module(self.builder)
