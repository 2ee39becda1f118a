"""What the pipeline hands a target's package builder, and what it gets back.

A builder module (`Target.builder`) has five functions, called in this order by pipeline.py:
    check(recipe, checkpoint)               refuse what this target cannot build, before any heavy work
    wants_prepared(recipe, target, integers) whether it builds from the rotated/calibrated checkpoint all targets share
    build(job) -> BuiltPackage              write the package into job.package_dir
    cache_limit(recipe) -> int | None       the longest sequence the package runs (the build's check cuts to it)
    seal(package_dir, recipe)               after the check, before the manifest: drop what only the check needed
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from phiexport.progress import StageProgress
from phiexport.recipe import Recipe
from phiexport.source.checkpoint import Checkpoint
from phiexport.targets.target import Target

if TYPE_CHECKING:
    from phiexport.quantize.calibrated import CalibratedWeights
    from phiexport.quantize.source_integers import SourceIntegers


@dataclass(frozen=True)
class BuildJob:
    recipe: Recipe
    checkpoint: Checkpoint
    target: Target
    package_dir: Path
    scratch: Path
    progress: StageProgress
    log_path: Path  # where the genai builder's own output goes
    prepared: tuple[Checkpoint, CalibratedWeights | None] | None = None  # the rotated/calibrated checkpoint
    integers: SourceIntegers | None = None  # a GGUF/GPTQ/AWQ source's own integers


@dataclass
class BuiltPackage:
    weights: dict[str, Any]  # the manifest's `weights` section: what was done to the weights, measured
    report: dict[str, Any] = field(default_factory=dict)  # entries for report.json (e.g. the operator check)
