"""Qualcomm NPU package, Phi Silica-style: w4a16 body as a 64-token prefill graph and a 1-token decode graph sharing
one copy of the weights in precompiled HTP context binaries; embeddings and LM head on the CPU.

Stages: load (+ Hadamard rotation) → export static fp32 graphs → record calibration feeds from the fp32 pipeline →
QDQ-quantize the bodies → quantize the CPU graphs → compile context binaries per SoC → check on the HTP simulator.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from phiexport.errors import BuildError
from phiexport.evaluate.metrics import TokenScores
from phiexport.export.static_graphs import StaticLayout, export_static_graphs
from phiexport.progress import StageProgress
from phiexport.recipe import Recipe
from phiexport.source import Checkpoint
from phiexport.targets import Target, register_target

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
PIPELINE_SCHEMA = "phiexport.npu-pipeline/1"
GRAPH_FILES = {
    "embeddings": "embeddings.onnx",
    "prefill": "body_prefill.onnx",
    "decode": "body_decode.onnx",
    "lm_head": "lm_head.onnx",
}
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
    from phiexport.quantize.calibrated import calibrate_weights
    from phiexport.quantize.calibration import record_body_feeds
    from phiexport.quantize.cpu_side import quantize_cpu_graph
    from phiexport.quantize.onnx_weights import match_float_weights, write_qdq_weights
    from phiexport.quantize.prepare import calibration_text, load_float_model
    from phiexport.quantize.rotation import rotate_decoder
    from phiexport.quantize.static_qdq import quantize_body
    from phiexport.runtime.static_pipeline import StaticPipeline

    npu, quant = recipe.npu, recipe.quantization
    layout = StaticLayout.from_config(checkpoint.config, context=npu.context_length, chunk=npu.chunk)
    fp32_dir = scratch / "npu-fp32"
    sequences = calibration_text(checkpoint, recipe, max_tokens=layout.context)
    calibrated = None
    if prepared is not None and npu.rotate == quant.rotate:  # the CPU target's weights are these weights
        model = load_float_model(prepared[0], trust_remote_code=recipe.source.trust_remote_code)
        calibrated = prepared[1]
    else:
        model = load_float_model(checkpoint, trust_remote_code=recipe.source.trust_remote_code)
        if npu.rotate:
            rotate_decoder(model, quant.rotation_seed)
        if quant.calibrated:
            with progress.stage("npu weights", f"{quant.method} on {len(sequences)} GSM8K train conversations"):
                calibrated = calibrate_weights(model, sequences, quant)
    with progress.stage("npu export", f"prefill {npu.chunk} + decode 1, context {npu.context_length}"):
        fp32_graphs = export_static_graphs(model, layout, fp32_dir)
        del model

    sequences = sequences[: npu.activation_sequences]
    with progress.stage("npu calibrate", f"{len(sequences)} GSM8K train conversations"):
        feeds = record_body_feeds(
            StaticPipeline.from_graphs(fp32_graphs, layout),
            sequences,
            decode_samples=npu.decode_samples,
            seed=recipe.calibration.seed,
        )

    weight_bits = 4 if quant.precision == "int4" else 8
    package_dir.mkdir(parents=True, exist_ok=True)
    graphs = {name: package_dir / file for name, file in GRAPH_FILES.items()}
    with progress.stage("npu quantize", f"w{weight_bits} block {quant.block_size}, a16"):
        for kind in ("prefill", "decode"):
            sources = match_float_weights(fp32_graphs[kind], calibrated.weights) if calibrated else {}
            quantize_body(
                fp32_graphs[kind],
                feeds[kind],
                graphs[kind],
                weight_bits=weight_bits,
                block_size=quant.block_size,
                bits_by_weight={name: weight.grid.bits for name, weight in sources.items()},
            )
            if sources and write_qdq_weights(graphs[kind], sources) != len(sources):
                raise BuildError(f"not every calibrated weight reached the {kind} graph", "report a bug")
        del feeds
        for name in ("embeddings", "lm_head"):
            shutil.copy2(fp32_graphs[name], graphs[name])
            shutil.copy2(fp32_dir / f"{name}.data", package_dir / f"{name}.data")
        quantize_cpu_graph(graphs["embeddings"], node="/embed_tokens/Gather", bits=4)
        quantize_cpu_graph(graphs["lm_head"], node="/lm_head/MatMul", bits=npu.lm_head_bits)

    contexts: dict[str, Any] = {}
    separate: dict[str, dict[str, Path]] = {}
    for soc_name in npu.socs:
        with progress.stage(f"npu compile {soc_name}", "HTP context binaries, weights shared"):
            contexts[soc_name], separate[soc_name] = compile_for_soc(
                graphs, package_dir, scratch / f"separate-{soc_name}", soc_name
            )
    first = npu.socs[0]
    with progress.stage("npu simulator", f"{npu.simulator_decode_tokens} decode tokens on the HTP simulator"):
        simulator = simulator_check(
            graphs, separate[first], layout, sequences[0], first, decode_tokens=npu.simulator_decode_tokens
        )

    write_pipeline_files(package_dir, recipe, checkpoint, layout, contexts)
    for name in TOKENIZER_FILES:
        if (checkpoint.path / name).is_file():
            shutil.copy2(checkpoint.path / name, package_dir / name)
    return {
        "body": f"int{weight_bits} symmetric weights in blocks of {quant.block_size}, uint16 activations (static QDQ)",
        "rotation": f"hadamard, seed {quant.rotation_seed}" if npu.rotate else None,
        "embeddings": "int4 block 32 (GatherBlockQuantized)",
        "lm_head": f"int{npu.lm_head_bits} block 32 (MatMulNBits)",
        "calibration": {
            "prefill_samples": sum(-(-min(len(ids), layout.context) // layout.chunk) for ids in sequences),
            "decode_samples": npu.decode_samples * len(sequences),
            "activation_sequences": len(sequences),
            **recipe.calibration.model_dump(),
        },
        "calibrated": calibrated.summary if calibrated else None,
        "contexts": contexts,
        "simulator": simulator,
    }


def compile_for_soc(
    graphs: dict[str, Path], package_dir: Path, scratch: Path, soc_name: str
) -> tuple[dict[str, Any], dict[str, Path]]:
    """Shared context binaries into `package_dir/<soc>/`, and each body compiled on its own into `scratch`: that
    measures the sharing, and unlike the shared binary (docs/npu.md) those binaries load on the x86 simulator.

    Returns the manifest record and the separately compiled `*_ctx.onnx` per body.
    """
    from phiexport.targets.htp import compile_context_binary, compile_shared_context, soc

    target = soc(soc_name)
    bodies = {"prefill": graphs["prefill"], "decode": graphs["decode"]}
    try:
        paths, _sessions = compile_shared_context(list(bodies.values()), package_dir / soc_name, target)
    except Exception as exc:  # onnxruntime raises its own types; the message names the node that did not fit
        raise BuildError(
            f"the body graphs do not compile for the HTP ({soc_name}): {exc}", "report this model"
        ) from exc
    scratch.mkdir(parents=True, exist_ok=True)
    separate = {
        kind: compile_context_binary(body, scratch / f"{body.stem}_ctx.onnx", target) for kind, body in bodies.items()
    }
    separate_bytes = sum(item.stat().st_size for item in scratch.glob("*.bin"))
    shared_bytes = sum(item.stat().st_size for item in (package_dir / soc_name).glob("*.bin"))
    return {
        "soc_model": target.soc_model,
        "htp_arch": target.htp_arch,
        "chip": target.chip,
        "prefill": str(paths[0].relative_to(package_dir)),
        "decode": str(paths[1].relative_to(package_dir)),
        "weight_sharing": True,
        "shared_bytes": shared_bytes,
        "separate_bytes": separate_bytes,
    }, separate


def simulator_check(
    graphs: dict[str, Path],
    contexts: dict[str, Path],
    layout: StaticLayout,
    token_ids: list[int],
    soc_name: str,
    *,
    decode_tokens: int,
) -> dict[str, Any]:
    """Load the compiled body context binaries on the HTP simulator (CPU fallback disabled), run one prefill chunk and
    `decode_tokens` decode steps, and compare the logits with the CPU EP running the QDQ graphs."""
    from phiexport.runtime.static_pipeline import StaticPipeline
    from phiexport.targets.htp import htp_session, soc

    target = soc(soc_name)
    prompt, following = token_ids[: layout.chunk], token_ids[layout.chunk : layout.chunk + decode_tokens]
    htp = StaticPipeline.from_graphs(
        {**graphs, **contexts}, layout, body_session=lambda path: htp_session(path, target)
    )
    cpu = StaticPipeline.from_graphs(graphs, layout)
    rows = []
    for pipeline in (htp, cpu):
        steps = [pipeline.logits(prompt)] + [pipeline.logits([token]) for token in following]
        rows.append(np.concatenate(steps))
    htp_logits, cpu_logits = rows
    scores = TokenScores()
    scores.add(cpu_logits, htp_logits, np.asarray(token_ids[1 : len(htp_logits) + 1]))
    agreement = scores.summary()
    return {
        "soc": soc_name,
        "positions": len(htp_logits),
        "loaded": "context binaries compiled per body (the shared pair loads only on ARM)",
        "every_body_node_on_htp": True,  # the sessions were created with CPU fallback disabled
        "kl_mean_vs_cpu_ep": agreement["kl_mean"],
        "top1_agreement_vs_cpu_ep": agreement["top1_agreement"],
    }


def write_pipeline_files(
    package_dir: Path, recipe: Recipe, checkpoint: Checkpoint, layout: StaticLayout, contexts: dict[str, Any]
) -> None:
    """npu_pipeline.json (phiexport's runner reads it) and genai_config.json (onnxruntime-genai's decoder pipeline)."""
    from phiexport.package.genai_pipeline import genai_pipeline_config

    rope = checkpoint.config.get("rope_parameters") or checkpoint.config.get("rope_scaling") or {}
    original = rope.get("original_max_position_embeddings") or checkpoint.config.get("original_max_position_embeddings")
    description = {
        "schema": PIPELINE_SCHEMA,
        "layout": layout.to_dict(),
        "graphs": GRAPH_FILES,
        "contexts": contexts,
        "rope": (
            f"position p < {original} uses the short factors, p >= {original} the long ones"
            if original
            else "one rotary table for every position"
        ),
    }
    (package_dir / PIPELINE_FILE).write_text(json.dumps(description, indent=2) + "\n", encoding="utf-8")
    config = genai_pipeline_config(checkpoint, layout, contexts[recipe.npu.socs[0]])
    (package_dir / "genai_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
