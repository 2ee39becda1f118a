"""Qualcomm NPU package, Phi Silica-style: w4a16 body as a 64-token prefill graph and a 1-token decode graph sharing
one copy of the weights in precompiled HTP context binaries; embeddings and LM head on the CPU.

Stages: the CPU graphs (embeddings, LM head) quantized a block of vocabulary rows at a time → per decoder layer:
its fp32 weights (rotated, GPTQ/AWQ if asked), its fp32 graphs, the calibration samples run through them, its QDQ
graphs → the layers stitched into the prefill and decode bodies → context binaries per SoC → a check on the HTP
simulator. One decoder layer is in memory at a time (source/layered.py), so the build's memory does not grow with
the depth of the model.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from phiexport.errors import BuildError, UsageError
from phiexport.evaluate.metrics import TokenScores
from phiexport.export.body_parts import BODY_KINDS, BodyPart, layer_weight_bytes, plan_parts
from phiexport.export.static_graphs import StaticLayout
from phiexport.progress import StageProgress
from phiexport.recipe import Recipe
from phiexport.source import Checkpoint
from phiexport.targets import Target, register_target
from phiexport.targets.htp import HTP_PROVIDER

if TYPE_CHECKING:
    from phiexport.quantize.calibrated import CalibratedWeights

NPU = register_target(
    Target(
        name="npu",
        execution_provider="qnn",
        precisions=("int4", "int8"),
        static_shapes=True,
        needs_calibration=True,
        evaluated_on="onnxruntime CPU execution provider running the same QDQ graphs, plus a short run on the HTP "
        "simulator (onnxruntime-qnn)",
        description="Qualcomm Hexagon NPUs through onnxruntime-qnn: 4-bit per-channel weights, uint16 activations, "
        "a prefill-chunk and a 1-token decode graph sharing weights in HTP context binaries",
    )
)
PIPELINE_FILE = "npu_pipeline.json"
PIPELINE_SCHEMA = "phiexport.npu-pipeline/2"
SIMULATOR_DIR = "simulator"  # <soc>/simulator/: each body compiled on its own, what the x86 simulator loads
VOCAB_FILES = {"embeddings": "embeddings.onnx", "lm_head": "lm_head.onnx"}  # the CPU graphs
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


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
    from phiexport.quantize.calibration import LayerCalibration
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

    codes, summary = _layer_weights(source, sequences, recipe, prepared[1] if reuse and prepared else None)
    activations = LayerCalibration(
        layout,
        sequences[: npu.activation_sequences],
        decode_samples=npu.decode_samples,
        seed=recipe.calibration.seed,
        cos=cos,
        sin=sin,
        embed=lambda ids: source.embedding_rows(torch_ids(ids)).numpy(),
    )
    with progress.stage("npu layers", f"export, calibrate, quantize w{weight_bits} block {quant.block_size} a16"):
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
            **recipe.calibration.model_dump(),
        },
        "calibrated": summary,
        "contexts": contexts,
        "simulator": simulator,
    }


def drop_qdq_bodies(package_dir: Path, recipe: Recipe) -> None:
    """The device layout: the QDQ body graphs served the build's checks; unless the recipe ships them, they go before
    the package is sealed (a device loads the context binaries alone)."""
    if recipe.npu.qdq_bodies:
        return
    pipeline = json.loads((package_dir / PIPELINE_FILE).read_text(encoding="utf-8"))
    for part in pipeline["parts"]:
        for kind in BODY_KINDS:
            (package_dir / part[kind]).unlink()
            (package_dir / f"{part[kind]}.data").unlink()


def reuses_prepared(recipe: Recipe) -> bool:
    """Whether the NPU package takes the weights the CPU-side targets prepared (the same rotation) rather than
    preparing its own."""
    from phiexport.targets import TARGETS

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


def quantize_layers(
    source: Any,
    layout: StaticLayout,
    activations: Any,
    codes: Any,
    parts: list[BodyPart],
    scratch: Path,
    package_dir: Path,
    *,
    weight_bits: int,
    block_size: int,
    track: Any,
) -> None:
    """The body graphs, a decoder layer at a time: export its fp32 graphs, run the calibration samples through
    them, quantize (activations from those samples, weights in blocks or `codes(index, layer)`); each part's
    graphs are stitched from its layers' as soon as its last layer is done."""
    from phiexport.export.static_graphs import export_layer_graphs
    from phiexport.export.stitch import stitch_layers
    from phiexport.quantize.onnx_weights import match_float_weights
    from phiexport.quantize.static_qdq import quantize_body
    from phiexport.runtime.static_pipeline import exact_session

    quantized: dict[str, list[Path]] = {"prefill": [], "decode": []}
    for index in track(range(layout.layers), layout.layers, "decoder layers"):
        layer = source.layer(index)
        layer_codes = codes(index, layer)
        fp32 = export_layer_graphs(layer, layout, scratch / "fp32")
        source.release(layer)
        activations.run_layer({kind: exact_session(path) for kind, path in fp32.items()})
        for kind, path in fp32.items():
            sources = match_float_weights(path, layer_codes) if layer_codes else {}
            if len(sources) != len(layer_codes):
                raise BuildError(
                    f"not every calibrated weight of layer {index} reached its {kind} graph", "report a bug"
                )
            target = scratch / f"{kind}.{index}" / f"{kind}.onnx"
            target.parent.mkdir(parents=True, exist_ok=True)
            quantize_body(
                path,
                activations.reader(kind),
                target,
                weight_bits=weight_bits,
                block_size=block_size,
                bits_by_weight={name: weight.grid.bits for name, weight in sources.items()},
                calibrated=sources,
            )
            quantized[kind].append(target)
        activations.advance()
        shutil.rmtree(scratch / "fp32")
        for part in parts:
            if part.stop == index + 1:
                for kind, layer_graphs in quantized.items():
                    stitch_layers(
                        layer_graphs[part.first :], layout, package_dir / part.graph_file(kind), first=part.first
                    )
                    for graph in layer_graphs[part.first :]:
                        shutil.rmtree(graph.parent)
    shutil.rmtree(scratch)


def _layer_weights(
    source: Any, sequences: list[list[int]], recipe: Recipe, prepared: CalibratedWeights | None
) -> tuple[Any, dict[str, Any] | None]:
    """`codes(index, layer)`: the GPTQ/AWQ codes of decoder layer `index` by HF module name (computed now, the
    layer modified in place, or taken from the CPU target's), empty for plain rounding; and the manifest summary."""
    from phiexport.quantize.calibrated import layer_by_layer

    def prefixed(weights: dict[str, Any], index: int) -> dict[str, Any]:
        prefix = f"model.layers.{index}."
        return {name: weight for name, weight in weights.items() if name.startswith(prefix)}

    if prepared is not None:
        return (lambda index, _layer: prefixed(prepared.weights, index)), prepared.summary
    if not recipe.quantization.calibrated:
        return (lambda _index, _layer: {}), None
    quantizer, summary = layer_by_layer(source.model, sequences, recipe.quantization)
    return quantizer.quantize, summary


def torch_ids(ids: list[int]) -> Any:
    import torch

    return torch.tensor(ids, dtype=torch.int64)


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
    return {
        "soc_model": target.soc_model,
        "htp_arch": target.htp_arch,
        "chip": target.chip,
        "weight_sharing": True,
        "parts": records,
    }, separate


def simulator_check(
    package_dir: Path,
    parts: list[BodyPart],
    bodies: dict[str, Path],
    prompt: list[int],
    soc_name: str,
    *,
    decode_tokens: int,
    profiles: Path,
) -> dict[str, Any]:
    """Run the package through onnxruntime-genai as a device app would, its bodies on the CPU EP (QDQ graphs), then
    with the separately compiled context binaries `bodies` (og stage → context model) through the QNN plugin on the
    HTP simulator, one simulated body at a time, and compare: the prompt chunk teacher-forced with part k's prefill
    simulated (og then takes prompts only), then greedy decode steps with part k's decode simulated after the QDQ
    prefill, while both decoded the same tokens (og cannot force a token into a decode step).

    Where the body nodes ran is read back from onnxruntime's profile of the simulated sessions (under `profiles`)."""
    from phiexport.runtime.genai import GenaiPipelineRunner
    from phiexport.targets.htp import node_providers

    def run(simulated: str | None, *, decode: bool) -> tuple[np.ndarray, list[int], np.ndarray]:
        """The prompt chunk's logits, and with `decode` greedy tokens and their logits; `simulated` on the HTP."""
        placement: dict[str, str | None] = {
            part.stage(kind): "cpu" if kind == "prefill" or decode else None for part in parts for kind in BODY_KINDS
        }
        if simulated is not None:
            placement[simulated] = "htp-sim"
        runner = GenaiPipelineRunner(package_dir, placement, bodies=bodies, profiles=profiles / str(simulated))
        chunk_logits = runner.logits(prompt)
        tokens, step_logits = runner.greedy_logits(prompt, decode_tokens + 1) if decode else ([], np.empty(0))
        runner.close()
        return chunk_logits, tokens, step_logits

    cpu_chunk, cpu_tokens, cpu_steps = run(None, decode=True)
    checked: list[dict[str, Any]] = []
    for part in parts:
        htp_chunk, _, _ = run(part.stage("prefill"), decode=False)
        _, htp_tokens, htp_steps = run(part.stage("decode"), decode=True)
        # decode step i (logits row i) decodes greedy token i - 1: comparable while both chose the same tokens before
        same = next(
            (i for i, (a, b) in enumerate(zip(cpu_tokens, htp_tokens, strict=False)) if a != b), len(cpu_tokens)
        )
        decoded = min(same, len(cpu_tokens) - 1, len(htp_tokens) - 1)
        scores = TokenScores()
        scores.add(
            np.concatenate([cpu_chunk, cpu_steps[1 : decoded + 1]]),
            np.concatenate([htp_chunk, htp_steps[1 : decoded + 1]]),
            np.asarray(prompt[1:] + cpu_tokens[: decoded + 1]),
        )
        agreement = scores.summary()
        stages = [part.stage(kind) for kind in BODY_KINDS]
        checked.append(
            {
                "layers": [part.first, part.stop],
                "decode_steps_compared": decoded,
                "body_nodes": {
                    stage: node_providers(next((profiles / stage).glob(f"{stage}_*.json"))) for stage in stages
                },
                "kl_mean_vs_cpu_ep": agreement["kl_mean"],
                "top1_agreement_vs_cpu_ep": agreement["top1_agreement"],
            }
        )
    return {
        "soc": soc_name,
        "positions": len(prompt) + min(part["decode_steps_compared"] for part in checked),
        "loaded": "context binaries compiled per body, run by onnxruntime-genai one at a time (the shared pairs load "
        "only on ARM)",
        "parts": checked,
        "every_body_node_on_htp": all(
            set(nodes) == {HTP_PROVIDER} for part in checked for nodes in part["body_nodes"].values()
        ),
        "kl_mean_vs_cpu_ep": max(part["kl_mean_vs_cpu_ep"] for part in checked),  # the worst part
        "top1_agreement_vs_cpu_ep": min(part["top1_agreement_vs_cpu_ep"] for part in checked),
        "decode_steps_compared": min(part["decode_steps_compared"] for part in checked),
    }


def write_pipeline_files(
    package_dir: Path,
    recipe: Recipe,
    checkpoint: Checkpoint,
    layout: StaticLayout,
    parts: list[BodyPart],
    contexts: dict[str, Any],
) -> None:
    """npu_pipeline.json (phiexport's runner reads it) and genai_config.json (onnxruntime-genai's decoder pipeline)."""
    from phiexport.package.genai_pipeline import genai_pipeline_config

    rope = checkpoint.config.get("rope_parameters") or checkpoint.config.get("rope_scaling") or {}
    original = rope.get("original_max_position_embeddings") or checkpoint.config.get("original_max_position_embeddings")
    description = {
        "schema": PIPELINE_SCHEMA,
        "layout": layout.to_dict(),
        "graphs": VOCAB_FILES,
        "parts": [part.to_dict() for part in parts],
        "qdq_bodies": recipe.npu.qdq_bodies,  # whether the package ships the parts' QDQ graphs
        "contexts": contexts,
        "rope": (
            f"position p < {original} uses the short factors, p >= {original} the long ones"
            if original
            else "one rotary table for every position"
        ),
    }
    (package_dir / PIPELINE_FILE).write_text(json.dumps(description, indent=2) + "\n", encoding="utf-8")
    config = genai_pipeline_config(checkpoint, layout, parts, contexts[recipe.npu.socs[0]])
    (package_dir / "genai_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
