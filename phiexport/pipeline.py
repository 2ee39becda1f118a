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
from phiexport.export.genai_builder import export_with_builder, set_session_options, stage_checkpoint
from phiexport.interrupts import deferred
from phiexport.package.card import write_model_card
from phiexport.package.chat import apply_chat_format
from phiexport.package.manifest import write_manifest
from phiexport.package.publish import full_disk_named, rejected_path, staged_output
from phiexport.package.signing import key_id, sign_package
from phiexport.progress import StageProgress
from phiexport.quantize.imported import SourceIntegers, describe_import, import_weights, source_integers
from phiexport.quantize.onnx_weights import write_matmul_nbits
from phiexport.quantize.prepare import prepare_checkpoint
from phiexport.quantize.static_qdq import check_htp_blocks
from phiexport.quantize.weight_only import builder_options, check_block_layout, check_weight_nodes
from phiexport.recipe import Recipe
from phiexport.source import resolve_source
from phiexport.targets import TARGETS, Target
from phiexport.targets.npu import build_npu_package, check_npu_weights, drop_qdq_bodies
from phiexport.targets.op_contract import load_contract


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
        check_block_layout(checkpoint.config, quant)
        if any(TARGETS[name].static_shapes for name in recipe.targets):
            check_htp_blocks(checkpoint.config, quant.block_size)
            check_npu_weights(recipe)
        integers = None
        if checkpoint.prequantized is not None and any(TARGETS[name].imports_integers for name in recipe.targets):
            with progress.stage("import", f"{checkpoint.prequantized.name}'s integers"):
                integers = source_integers(checkpoint, quant)
        exported, calibrated, prepared = checkpoint, None, None
        if (quant.rotate or quant.calibrated) and any(
            not TARGETS[name].static_shapes and not _imports_all(TARGETS[name], integers) for name in recipe.targets
        ):
            with progress.stage("prepare weights", _preparation(recipe)):
                exported, calibrated = prepare_checkpoint(checkpoint, Path(scratch) / "prepared", recipe)
                prepared = (exported, calibrated)
        options = builder_options(quant)
        if recipe.source.trust_remote_code:
            options["hf_remote"] = "true"
        packages: dict[str, Path] = {}
        weights: dict[str, dict[str, Any]] = {}
        operators: dict[str, dict[str, Any]] = {}  # targets with an operator contract: what was checked
        for name in recipe.targets:
            target = TARGETS[name]
            package_dir = staging / target.name
            if target.static_shapes:
                weights[name] = build_npu_package(
                    recipe, checkpoint, package_dir, Path(scratch), progress, prepared=prepared
                )
            else:
                with progress.stage(f"export {target.name}", quant.describe()):
                    export_with_builder(
                        stage_checkpoint(exported, Path(scratch) / target.name),
                        package_dir,
                        precision=quant.precision,
                        execution_provider=target.execution_provider,
                        options={**options, **dict(target.builder_options)},
                        cache_dir=Path(scratch) / "builder-cache",
                        log_path=log_path,
                    )
                    set_session_options(package_dir, dict(target.session_options))
                    if calibrated is not None:
                        write_matmul_nbits(package_dir / "model.onnx", calibrated.weights)
                    weights[name] = check_weight_nodes(_graph_nodes(package_dir / "model.onnx"), quant)
                    if integers is not None and target.imports_integers:
                        level = quant.compute_level(imported=True)
                        imported = import_weights(package_dir / "model.onnx", integers.weights, accuracy_level=level)
                        report = integers.report(imported, level)
                        weights[name] = {
                            "precision": quant.precision,
                            "body": describe_import(report),
                            "imported": report,
                            **({"requantized_with": weights[name]} if report["requantized"] else {}),
                        }
                    if target.op_contract:
                        operators[name] = load_contract(target.op_contract).check(package_dir / "model.onnx")
                    if calibrated is not None:
                        weights[name]["calibrated"] = calibrated.summary
            packages[name] = package_dir
        chat_setup = {name: apply_chat_format(path, chat) for name, path in packages.items()} if chat else {}

        evaluation = recipe.evaluation
        if static := [recipe.npu.context_length for name in recipe.targets if TARGETS[name].static_shapes]:
            # every package scores the same token streams, so they are cut to fit the smallest fixed cache
            evaluation = evaluation.model_copy(update={"max_tokens": min(evaluation.max_tokens, *static)})
        with progress.stage("verify", f"{recipe.evaluation.sequences} held-out sequences"):
            reports = verify_packages(
                checkpoint.path,
                packages,
                evaluation,
                trust_remote_code=recipe.source.trust_remote_code,
                track=progress.track,
                chat_template=chat.template if chat else None,
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
                if name in operators:
                    reports[name]["operators"] = operators[name]
                if structure is not None:
                    reports[name]["structure"] = structure
                if name in chat_setup:
                    reports[name]["chat"] = chat_setup[name]
                if target.static_shapes:
                    drop_qdq_bodies(package_dir, recipe)
                report_text = json.dumps(reports[name], indent=2) + "\n"
                (package_dir / "report.json").write_text(report_text, encoding="utf-8")
                write_model_card(
                    package_dir,
                    recipe=recipe,
                    checkpoint=checkpoint,
                    target=target,
                    report=reports[name],
                    weights=weights[name],
                )
                write_manifest(package_dir, recipe=recipe, checkpoint=checkpoint, target=target, weights=weights[name])
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


def _imports_all(target: Target, integers: SourceIntegers | None) -> bool:
    """True when `target` takes every weight from the source's integers, so needs no prepared weights."""
    return integers is not None and target.imports_integers and integers.complete


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


def _graph_nodes(model_path: Path) -> list[Any]:
    import onnx

    return list(onnx.load(model_path, load_external_data=False).graph.node)
