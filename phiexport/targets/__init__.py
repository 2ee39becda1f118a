"""Device targets: each declares, as data, what its execution provider needs from a package, and names the module
that builds its package: `genai_package` (cpu, dml: the onnxruntime-genai model builder) or `npu.build` (the
static-graph path). The pipeline reads these declarations; no other stage checks target names.
"""

from __future__ import annotations

from phiexport.targets.cpu import CPU
from phiexport.targets.dml import DML
from phiexport.targets.npu import NPU
from phiexport.targets.target import Target

TARGETS: dict[str, Target] = {target.name: target for target in (CPU, DML, NPU)}
