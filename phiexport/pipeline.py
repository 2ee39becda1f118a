"""build(recipe) → one verified package per target: source → export/quantize → evaluate → package.

`build(load_recipe("smollm2-135m-instruct"), Path("packages/smollm2"))` returns a BuildResult whose
`reports["cpu"]["metrics"]["kl_mean"]` is the CPU package's measured KL against the reference.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from phiexport.architectures.structure import compare_structure
from phiexport.chat_formats import chat_format
from phiexport.errors import BuildError, GateFailed
from phiexport.evaluate.gates import check_gates, gates_report, split_gates
from phiexport.evaluate.verify import verify_packages
from phiexport.export.capture import output_to_log
from phiexport.interrupts import deferred
from phiexport.package.card import write_model_card
from phiexport.package.chat import apply_chat_format
from phiexport.package.manifest import write_manifest
from phiexport.package.publish import full_disk_named, rejected_path, staged_output
from phiexport.package.signing import key_id, sign_package
from phiexport.progress import StageProgress
from phiexport.quantize.device import calibration_device
from phiexport.quantize.prepare import prepare_checkpoint
from phiexport.quantize.source_integers import source_integers
from phiexport.quantize.weight_only import check_block_layout
from phiexport.recipe import Recipe
from phiexport.source import resolve_source
from phiexport.targets import TARGETS
from phiexport.targets.job import BuildJob, BuiltPackage


@dataclass
class BuildResult:
    output: Path
    packages: dict[str, Path]  # target name → package directory
    reports: dict[str, dict[str, Any]]
    timings: dict[str, float] = field(default_factory=dict)
    signed_by: str | None = None  # key id of the ed25519 key that signed every manifest


BUILD_METRICS = ("kl_mean", "top1_agreement", "ppl_ratio")  # what the build's check measures, so what it can gate


def cache_root() -> Path:
    """Where dequantized GGUF checkpoints are kept between builds: $PHIEXPORT_CACHE or ~/.cache/phiexport."""
    if configured := os.environ.get("PHIEXPORT_CACHE"):
        return Path(configured)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "phiexport"


def build(
    recipe: Recipe,
    output: Path,
    *,
    force: bool = False,
    progress: StageProgress | None = None,
    signing_key: Ed25519PrivateKey | None = None,
) -> BuildResult:
    """Build every target of `recipe` into `output/<target>/`; nothing appears at `output` unless all succeed.
    With `signing_key`, each package is signed before it is published.

    The builder's own output goes to a log file, kept only when a BuildError names it.
    """
    progress = progress or StageProgress()
    output = output.absolute()
    log_fd, log_name = tempfile.mkstemp(prefix="phiexport-build-", suffix=".log")
    os.close(log_fd)
    log_path = Path(log_name)
    try:
        with output_to_log(log_path):
            result = _build_into(recipe, output, force, progress, log_path, signing_key)
    except BaseException as exc:
        if not isinstance(exc, BuildError):  # only a BuildError names the log in its message
            log_path.unlink(missing_ok=True)
        raise
    log_path.unlink(missing_ok=True)
    return result


def _build_into(
    recipe: Recipe,
    output: Path,
    force: bool,
    progress: StageProgress,
    log_path: Path,
    signing_key: Ed25519PrivateKey | None,
) -> BuildResult:
    with (
        staged_output(output, force=force) as staging,
        tempfile.TemporaryDirectory(prefix="phiexport-") as scratch,
        full_disk_named({"output": staging.parent, "scratch, $TMPDIR": Path(scratch).parent, "cache": cache_root()}),
    ):
        with progress.stage("load libraries"), deferred():
            _import_heavy_libraries()
        with progress.stage("source", recipe.source.model):
            checkpoint = resolve_source(recipe.source, cache_root())

        structure = compare_structure(recipe.structure, checkpoint.config, recipe.name) if recipe.structure else None
        chat = chat_format(recipe.chat.format) if recipe.chat.format else None
        quant = recipe.quantization
        builders = {name: TARGETS[name].package_builder() for name in recipe.targets}
        check_block_layout(checkpoint.config, quant)
        for builder in builders.values():
            builder.check(recipe, checkpoint)
        integers = None
        if checkpoint.prequantized is not None and any(TARGETS[name].imports_integers for name in recipe.targets):
            with progress.stage("import", f"{checkpoint.prequantized.name}'s integers"):
                integers = source_integers(checkpoint, quant)
        prepared = None
        if any(builder.wants_prepared(recipe, TARGETS[name], integers) for name, builder in builders.items()):
            with progress.stage("prepare weights", _preparation(recipe)):
                prepared = prepare_checkpoint(checkpoint, Path(scratch) / "prepared", recipe)
        packages: dict[str, Path] = {}
        built: dict[str, BuiltPackage] = {}
        for name, builder in builders.items():
            packages[name] = staging / name
            job = BuildJob(
                recipe=recipe,
                checkpoint=checkpoint,
                target=TARGETS[name],
                package_dir=packages[name],
                scratch=Path(scratch),
                progress=progress,
                log_path=log_path,
                prepared=prepared,
                integers=integers,
            )
            built[name] = builder.build(job)
        chat_setup = {name: apply_chat_format(path, chat) for name, path in packages.items()} if chat else {}

        evaluation = recipe.evaluation
        if limits := [limit for builder in builders.values() if (limit := builder.cache_limit(recipe)) is not None]:
            # every package scores the same token streams, so they are cut to fit the smallest fixed cache
            evaluation = evaluation.model_copy(update={"max_tokens": min(evaluation.max_tokens, *limits)})
        with progress.stage("verify", f"{recipe.evaluation.sequences} held-out sequences"):
            reports = verify_packages(
                checkpoint.path,
                packages,
                evaluation,
                trust_remote_code=recipe.source.trust_remote_code,
                track=progress.track,
                chat_template=chat.template if chat else None,
                device=calibration_device(recipe.calibration.device),
            )

        gates, left_to_eval = split_gates(recipe.gates, BUILD_METRICS)
        failures = {
            name: check_gates(reports[name]["metrics"], gates, f"{name}-{quant.precision}") for name in packages
        }
        with progress.stage("package"):
            for name, package_dir in packages.items():
                target = TARGETS[name]
                reports[name]["gates"] = {**gates_report(gates, failures[name]), "left_to_eval": left_to_eval}
                reports[name]["evaluated_on"] = target.evaluated_on
                reports[name] |= built[name].report
                if structure is not None:
                    reports[name]["structure"] = structure
                if name in chat_setup:
                    reports[name]["chat"] = chat_setup[name]
                builders[name].seal(package_dir, recipe)
                report_text = json.dumps(reports[name], indent=2) + "\n"
                (package_dir / "report.json").write_text(report_text, encoding="utf-8")
                write_model_card(
                    package_dir,
                    recipe=recipe,
                    checkpoint=checkpoint,
                    target=target,
                    report=reports[name],
                    weights=built[name].weights,
                )
                write_manifest(
                    package_dir, recipe=recipe, checkpoint=checkpoint, target=target, weights=built[name].weights
                )
                if signing_key is not None:
                    sign_package(package_dir, signing_key)
        if failed := [str(failure) for found in failures.values() for failure in found]:
            rejected = rejected_path(output)
            raise GateFailed(
                failed, "packages withheld", f"inspect {rejected} (not published), then fix the recipe or its gates"
            )

    return BuildResult(
        output=output,
        packages={name: output / name for name in packages},
        reports=reports,
        timings=dict(progress.timings),
        signed_by=key_id(signing_key.public_key()) if signing_key is not None else None,
    )


def _preparation(recipe: Recipe) -> str:
    quant, calibration = recipe.quantization, recipe.calibration
    steps = [f"hadamard rotation, seed {quant.rotation_seed}"] if quant.rotate else []
    if quant.calibrated:
        steps.append(f"{quant.method} on {calibration.sequences} GSM8K train conversations")
    return " + ".join(steps)


def _import_heavy_libraries() -> None:
    import onnx  # noqa: F401
    import onnxruntime  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401
    from onnxruntime_genai.models import builder  # noqa: F401
