"""`phiexport eval` end to end: find the packages and their reference, settle the settings, score, write the card."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from phiexport.chat_formats import chat_format
from phiexport.errors import GateFailed, UsageError
from phiexport.evaluate.compare import (
    EVAL_SCHEMA,
    Evaluation,
    Subject,
    evaluate_packages,
    find_subjects,
    measured_metrics,
)
from phiexport.evaluate.gates import check_gates_measurable
from phiexport.evaluate.report_card import REPORT_JSON, write_report_card
from phiexport.package.manifest import read_manifest
from phiexport.pipeline import cache_root
from phiexport.progress import StageProgress
from phiexport.quantize.device import calibration_device
from phiexport.recipe import Recipe, SourceConfig, parse_recipe
from phiexport.source import resolve_source

RAW_DIR = "raw"


def run_eval(
    package_paths: Sequence[Path],
    *,
    output: Path,
    recipe: Recipe | None,
    overrides: dict[str, Any],
    flags: Mapping[str, str] | None = None,
    reference: SourceConfig | None,
    npu_devices: Sequence[str],
    progress: StageProgress,
) -> tuple[Path, Evaluation]:
    """Evaluate the packages and write the report card into `output` (see `gate_failure` for what follows a miss).
    Settings and gates come from `recipe`, else from the first package's build recipe, with `overrides` (set by the
    options `flags` names) on top. The torch reference runs where `calibration.device` says."""
    subjects = find_subjects(package_paths, npu_devices)
    settings = (recipe or _build_recipe(subjects[0])).with_overrides(overrides, flags)
    check_gates_measurable(settings.gates, measured_metrics(settings.evaluation))
    torch_device = calibration_device(settings.calibration.device)  # a GPU asked for and missing fails now
    check_output(output)
    source = reference or _packages_source(subjects)
    with progress.stage("reference", source.model):
        checkpoint = resolve_source(source, cache_root())
    _check_vocabulary(checkpoint.config, subjects)
    evaluation = evaluate_packages(
        checkpoint,
        subjects,
        settings.evaluation,
        settings.gates,
        output / RAW_DIR,
        trust_remote_code=source.trust_remote_code,
        track=progress.track,
        chat_template=chat_format(settings.chat.format).template if settings.chat.format else None,
        device=torch_device,
    )
    with progress.stage("report card"):
        markdown = write_report_card(evaluation, output)
    return markdown, evaluation


def gate_failure(evaluation: Evaluation, markdown: Path) -> GateFailed | None:
    """The error (exit 4) to raise once the card is shown, if any row missed a gate."""
    if not (failed := evaluation.failed_gates):
        return None
    rows = evaluation.report["packages"]
    failing = sum(not row["gates"]["passed"] for row in rows)
    return GateFailed(
        failed,
        f"{failing} of {len(rows)} packages failed their gates",
        f"see {markdown}; do not ship them (or relax the gates if the limits are wrong)",
    )


def check_output(output: Path) -> None:
    """The report folder is new, empty, or an earlier report (whose raw results are reused)."""
    if output.is_file() or (output.is_dir() and any(output.iterdir()) and not _is_report(output)):
        raise UsageError(f"{output} exists and is not an eval report", "pass a new or empty --output folder")
    output.mkdir(parents=True, exist_ok=True)


def _is_report(folder: Path) -> bool:
    if (folder / RAW_DIR).is_dir():
        return True
    try:
        return json.loads((folder / REPORT_JSON).read_text(encoding="utf-8")).get("schema") == EVAL_SCHEMA
    except (OSError, ValueError):
        return False


def _build_recipe(subject: Subject) -> Recipe:
    return parse_recipe(read_manifest(subject.package_dir)["recipe"], origin=f"{subject.package_dir}/manifest.json")


def _packages_source(subjects: list[Subject]) -> SourceConfig:
    """The checkpoint every package was built from, as its manifest recorded it."""
    sources = {}
    for subject in subjects:
        manifest = read_manifest(subject.package_dir)
        options = manifest["recipe"]["source"]
        sources[(manifest["source"]["origin"], manifest["source"]["revision"])] = SourceConfig(
            model=manifest["source"]["origin"],
            revision=manifest["source"]["revision"] if manifest["source"]["kind"] == "hub" else None,
            allow_pickle=options["allow_pickle"],
            trust_remote_code=options["trust_remote_code"],
        )
    if len(sources) > 1:
        names = ", ".join(origin for origin, _ in sources)
        raise UsageError(f"the packages come from different sources ({names})", "pass --reference MODEL")
    return next(iter(sources.values()))


def _check_vocabulary(config: dict[str, Any], subjects: list[Subject]) -> None:
    for subject in subjects:
        genai = json.loads((subject.package_dir / "genai_config.json").read_text(encoding="utf-8"))
        if genai["model"]["vocab_size"] != config.get("vocab_size"):
            raise UsageError(
                f"{subject.package_dir} has a vocabulary of {genai['model']['vocab_size']} tokens, the reference "
                f"{config.get('vocab_size')}",
                "pass the --reference the package was built from",
            )
