"""The NPU package, the builder module of targets/job.py.

Stages: the CPU graphs (embeddings, LM head) quantized a block of vocabulary rows at a time → per decoder layer:
its fp32 weights (rotated, GPTQ/AWQ if asked), its fp32 graphs, the calibration samples run through them, its QDQ
graphs → each body part's layers stitched into its prefill and decode graphs → context binaries per part and SoC →
a check on the HTP simulator. One decoder layer is in memory at a time (source/layered.py) and one part is compiled
at a time, so the build's memory does not grow with the depth of the model.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from phiexport.errors import UsageError
from phiexport.export.body_parts import BODY_KINDS, layer_weight_bytes, plan_parts
from phiexport.export.static_graphs import StaticLayout
from phiexport.package.npu_layout import PIPELINE_FILE, SIMULATOR_DIR, TOKENIZER_FILES, write_pipeline_files
from phiexport.quantize.static_qdq import check_htp_blocks
from phiexport.recipe import Recipe
from phiexport.source.checkpoint import Checkpoint
from phiexport.targets.job import BuildJob, BuiltPackage
from phiexport.targets.npu.contexts import compile_for_soc
from phiexport.targets.npu.layers import layer_codes, quantize_layers
from phiexport.targets.npu.simulator import simulator_check
from phiexport.targets.target import Target

if TYPE_CHECKING:
    from phiexport.progress import StageProgress
    from phiexport.quantize.calibrated import CalibratedWeights
    from phiexport.quantize.source_integers import SourceIntegers


def check(recipe: Recipe, checkpoint: Checkpoint) -> None:
    """Block sizes the HTP runs, and a weight method the build can run a layer at a time."""
    check_htp_blocks(checkpoint.config, recipe.quantization.block_size)
    check_npu_weights(recipe)


def wants_prepared(recipe: Recipe, target: Target, integers: SourceIntegers | None) -> bool:
    """Never: the build rotates and calibrates a layer at a time itself; it reuses what the others prepared."""
    return False


def build(job: BuildJob) -> BuiltPackage:
    return BuiltPackage(
        build_npu_package(job.recipe, job.checkpoint, job.package_dir, job.scratch, job.progress, job.prepared)
    )


def cache_limit(recipe: Recipe) -> int | None:
    """The fixed KV cache."""
    return recipe.npu.context_length


def seal(package_dir: Path, recipe: Recipe) -> None:
    drop_qdq_bodies(package_dir, recipe)


def build_npu_package(
    recipe: Recipe,
    checkpoint: Checkpoint,
    package_dir: Path,
    scratch: Path,
    progress: StageProgress,
    prepared: tuple[Checkpoint, CalibratedWeights | None] | None = None,
) -> dict[str, Any]:
    """Write the NPU package into `package_dir`; returns the manifest's `weights` section (what was done, measured).

    `prepared` is the rotated and/or calibrated checkpoint made for the CPU target, reused when it fits.
    """
    from phiexport.export.static_graphs import rotary_tables
    from phiexport.export.vocab_graphs import write_vocab_graphs
    from phiexport.quantize.device import calibration_device, session_providers
    from phiexport.quantize.prepare import calibration_text
    from phiexport.source.layered import LayeredModel

    npu, quant = recipe.npu, recipe.quantization
    layout = StaticLayout.from_config(checkpoint.config, context=npu.context_length, chunk=npu.chunk)
    weight_bits = 4 if quant.precision == "int4" else 8
    layer_bytes = layer_weight_bytes(checkpoint.config, weight_bits=weight_bits, block_size=quant.block_size)
    parts = plan_parts(layer_bytes, layout.layers, parts=npu.parts, budget=npu.part_budget_mib * 2**20)
    sequences = calibration_text(checkpoint, recipe, max_tokens=layout.context)
    reuse = prepared is not None and reuses_prepared(recipe)
    source = LayeredModel(
        prepared[0].path if reuse and prepared else checkpoint.path,
        rotation_seed=quant.rotation_seed if npu.rotate and not reuse else None,
        trust_remote_code=recipe.source.trust_remote_code,
    )
    cos, sin = (table.numpy() for table in rotary_tables(source.model, layout.context))
    package_dir.mkdir(parents=True, exist_ok=True)
    with progress.stage("npu vocabulary", f"embeddings int4, lm_head int{npu.lm_head_bits}, block 32"):
        write_vocab_graphs(source, layout, cos, sin, package_dir, lm_head_bits=npu.lm_head_bits)

    device = calibration_device(recipe.calibration.device)
    codes, summary = layer_codes(source, sequences, recipe, prepared[1] if reuse and prepared else None, device)
    activations = layer_calibration(source, layout, sequences, recipe, cos, sin)
    providers = session_providers(device)
    on = "CUDA" if providers[0] == "CUDAExecutionProvider" else "CPU"
    with progress.stage(
        "npu layers", f"export, calibrate on the {on}, quantize w{weight_bits} block {quant.block_size} a16"
    ):
        quantize_layers(
            source,
            layout,
            activations,
            codes,
            parts,
            scratch / "npu-layers",
            package_dir,
            weight_bits=weight_bits,
            block_size=quant.block_size,
            track=progress.track,
            providers=providers,
        )
    contexts: dict[str, Any] = {}
    separate: dict[str, dict[str, Path]] = {}
    for index, soc_name in enumerate(npu.socs):
        shipped = npu.simulator_binaries and index == 0
        separate_dir = package_dir / soc_name / SIMULATOR_DIR if shipped else scratch / f"separate-{soc_name}"
        with progress.stage(f"npu compile {soc_name}", f"{len(parts)} HTP context binaries, weights shared in each"):
            contexts[soc_name], separate[soc_name] = compile_for_soc(
                parts, package_dir, separate_dir, soc_name, track=progress.track
            )
    write_pipeline_files(package_dir, recipe, checkpoint, layout, parts, contexts)
    for name in TOKENIZER_FILES:
        if (checkpoint.path / name).is_file():
            shutil.copy2(checkpoint.path / name, package_dir / name)
    first = npu.socs[0]
    with progress.stage(
        "npu simulator",
        f"{npu.simulator_decode_tokens} decode tokens on the HTP simulator, through og, a body at a time",
    ):
        simulator = simulator_check(
            package_dir,
            parts,
            separate[first],
            activations.sequences[0][: layout.chunk],
            first,
            decode_tokens=npu.simulator_decode_tokens,
            profiles=scratch / "simulator-profiles",
        )
    return {
        "body": f"int{weight_bits} symmetric weights in blocks of {quant.block_size}, uint16 activations (static QDQ)",
        "rotation": f"hadamard, seed {quant.rotation_seed}" if npu.rotate else None,
        "embeddings": "int4 block 32 (GatherBlockQuantized)",
        "lm_head": f"int{npu.lm_head_bits} block 32 (MatMulNBits)",
        "parts": {
            "layers": [[part.first, part.stop] for part in parts],
            "requested": npu.parts,
            "layer_weight_bytes": layer_bytes,
            **({"budget_mib": npu.part_budget_mib} if npu.parts == "auto" else {}),
        },
        "calibration": {
            "prefill_samples": len(activations.calls["prefill"]),
            "decode_samples": len(activations.calls["decode"]),
            "activation_sequences": len(activations.sequences),
            "activations_provider": providers[0],
            **recipe.calibration.model_dump(),
        },
        "calibrated": summary,
        "contexts": contexts,
        "qdq_bodies": npu.qdq_bodies,
        "simulator": simulator,
    }


def drop_qdq_bodies(package_dir: Path, recipe: Recipe) -> None:
    """The device layout: the QDQ body graphs served the build's checks; unless the recipe ships them, they go before
    the package is sealed (a device loads the context binaries alone)."""
    if recipe.npu.qdq_bodies:
        return
    pipeline = json.loads((package_dir / PIPELINE_FILE).read_text(encoding="utf-8"))
    for part in pipeline["parts"]:
        for name in (*(part[kind] for kind in BODY_KINDS), part["data"]):
            (package_dir / name).unlink()


def reuses_prepared(recipe: Recipe) -> bool:
    """Whether the NPU package takes the weights the CPU-side targets prepared (the same rotation) rather than
    preparing its own."""
    from phiexport.targets import TARGETS  # the declarations: which targets of the recipe prepare weights

    prepares = any(not TARGETS[name].static_shapes for name in recipe.targets)
    return prepares and recipe.npu.rotate == recipe.quantization.rotate


def check_npu_weights(recipe: Recipe) -> None:
    """Refuse, before anything is built, a weight method the NPU build cannot run on its own, a layer at a time."""
    quant = recipe.quantization
    if quant.is_integer and quant.mixed == "auto" and not reuses_prepared(recipe):
        raise UsageError(
            "mixed: auto scores the whole model per candidate, and the NPU build holds one decoder layer at a time",
            "add the cpu target (the NPU package then reuses its weights), or use gptq or awq without mixed: auto",
        )


def layer_calibration(
    source: Any, layout: StaticLayout, sequences: list[list[int]], recipe: Recipe, cos: Any, sin: Any
) -> Any:
    """The activation calibration samples of the recipe's first `npu.activation_sequences` conversations, embedded
    by `source` (a LayeredModel), ready for the first decoder layer."""
    from phiexport.quantize.calibration import LayerCalibration

    return LayerCalibration(
        layout,
        sequences[: recipe.npu.activation_sequences],
        decode_samples=recipe.npu.decode_samples,
        seed=recipe.calibration.seed,
        cos=cos,
        sin=sin,
        embed=lambda ids: source.embedding_rows(torch_ids(ids)).numpy(),
    )


def torch_ids(ids: list[int]) -> Any:
    import torch

    return torch.tensor(ids, dtype=torch.int64)
