"""The builder-backed package (cpu, dml): onnxruntime-genai's model builder writes the graph, then phiexport puts
in what it quantized itself (GPTQ/AWQ codes) or imported (a GGUF's integers), checks every weight node and, for a
target with an operator contract, every operator. The builder module of targets/job.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from phiexport.export.genai_builder import export_with_builder, set_session_options, stage_checkpoint
from phiexport.quantize.imported import FLOAT_TABLE, import_weights
from phiexport.quantize.onnx_weights import write_matmul_nbits
from phiexport.quantize.source_integers import SourceIntegers, describe_import
from phiexport.quantize.weight_only import builder_options, check_weight_nodes
from phiexport.recipe import Recipe
from phiexport.source.checkpoint import Checkpoint
from phiexport.targets.job import BuildJob, BuiltPackage
from phiexport.targets.op_contract import load_contract
from phiexport.targets.target import Target


def check(recipe: Recipe, checkpoint: Checkpoint) -> None:
    """Nothing beyond the recipe's own validation: the builder takes every layout check_block_layout allows."""


def wants_prepared(recipe: Recipe, target: Target, integers: SourceIntegers | None) -> bool:
    """Rotation and GPTQ/AWQ change the weights the builder reads, unless every weight comes from the source's
    integers."""
    imports_all = integers is not None and target.imports_integers and integers.complete
    return (recipe.quantization.rotate or recipe.quantization.calibrated) and not imports_all


def build(job: BuildJob) -> BuiltPackage:
    recipe, target, package_dir = job.recipe, job.target, job.package_dir
    quant = recipe.quantization
    exported, calibrated = job.prepared or (job.checkpoint, None)
    options = builder_options(quant)
    if recipe.source.trust_remote_code:
        options["hf_remote"] = "true"
    report: dict[str, Any] = {}
    integers = job.integers if target.imports_integers else None
    level = quant.compute_level(imported_from=integers.label if integers is not None else None)
    detail = quant.describe() if integers is None else integers.describe(level, quant.describe())
    with job.progress.stage(f"export {target.name}", detail):
        export_with_builder(
            stage_checkpoint(exported, job.scratch / target.name),
            package_dir,
            precision=quant.precision,
            execution_provider=target.execution_provider,
            options={**options, **dict(target.builder_options)},
            cache_dir=job.scratch / "builder-cache",
            log_path=job.log_path,
        )
        set_session_options(package_dir, dict(target.session_options))
        if calibrated is not None:
            write_matmul_nbits(package_dir / "model.onnx", calibrated.weights)
        nodes = _graph_nodes(package_dir / "model.onnx")
        weights = check_weight_nodes(nodes, quant)
        if integers is not None:
            imported = import_weights(package_dir / "model.onnx", integers.weights, accuracy_level=level)
            float_table = any(node.op_type == "Gather" and node.input[0] == FLOAT_TABLE for node in nodes)
            summary = integers.report(imported, level, float_embedding=float_table)
            weights = {
                "precision": quant.precision,
                "body": describe_import(summary),
                "imported": summary,
                **({"requantized_with": weights} if summary["requantized"] else {}),
            }
        if target.op_contract:
            report["operators"] = load_contract(target.op_contract).check(package_dir / "model.onnx")
        if calibrated is not None:
            weights["calibrated"] = calibrated.summary
    return BuiltPackage(weights, report)


def cache_limit(recipe: Recipe) -> int | None:
    """None: the KV cache grows with the sequence."""
    return None


def seal(package_dir: Path, recipe: Recipe) -> None:
    """Everything the builder wrote ships."""


def _graph_nodes(model_path: Path) -> list[Any]:
    import onnx

    return list(onnx.load(model_path, load_external_data=False).graph.node)
