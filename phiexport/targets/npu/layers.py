"""The NPU body graphs a decoder layer at a time, each part stitched as soon as its last layer is quantized."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from phiexport.errors import BuildError
from phiexport.export.body_parts import BodyPart
from phiexport.export.static_graphs import StaticLayout
from phiexport.memory import release_freed_memory
from phiexport.recipe import Recipe

if TYPE_CHECKING:
    from phiexport.quantize.calibrated import CalibratedWeights


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
    providers: Sequence[str] = ("CPUExecutionProvider",),
) -> None:
    """The body graphs, a decoder layer at a time: export its fp32 graphs, run the calibration samples through
    them on onnxruntime's `providers`, quantize (activations from those samples, weights in blocks or
    `codes(index, layer)`); each part's graphs are stitched from its layers' as soon as its last layer is done."""
    from phiexport.export.static_graphs import export_layer_graphs
    from phiexport.export.stitch import WeightFile, stitch_layers
    from phiexport.quantize.onnx_weights import match_float_weights
    from phiexport.quantize.static_qdq import quantize_body
    from phiexport.runtime.static_pipeline import exact_session

    quantized: dict[str, list[Path]] = {"prefill": [], "decode": []}
    for index in track(range(layout.layers), layout.layers, "decoder layers"):
        layer = source.layer(index)
        layer_codes = codes(index, layer)
        fp32 = export_layer_graphs(layer, layout, scratch / "fp32")
        source.release(layer)
        activations.run_layer({kind: exact_session(path, providers) for kind, path in fp32.items()})
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
                providers=providers,
            )
            quantized[kind].append(target)
        activations.advance()
        shutil.rmtree(scratch / "fp32")
        release_freed_memory()
        for part in parts:
            if part.stop == index + 1:
                with WeightFile(package_dir / part.data_file) as data:
                    for kind, layer_graphs in quantized.items():
                        output = package_dir / part.graph_file(kind)
                        stitch_layers(layer_graphs[part.first :], layout, output, data, first=part.first)
                for layer_graphs in quantized.values():
                    for graph in layer_graphs[part.first :]:
                        shutil.rmtree(graph.parent)
    shutil.rmtree(scratch)


def layer_codes(
    source: Any, sequences: list[list[int]], recipe: Recipe, prepared: CalibratedWeights | None, device: Any
) -> tuple[Any, dict[str, Any] | None]:
    """`codes(index, layer)`: the GPTQ/AWQ codes of decoder layer `index` by HF module name (computed now on torch
    `device`, the layer modified in place, or taken from the CPU target's), empty for plain rounding; and the
    manifest summary."""
    from phiexport.quantize.calibrated import layer_by_layer

    def prefixed(weights: dict[str, Any], index: int) -> dict[str, Any]:
        prefix = f"model.layers.{index}."
        return {name: weight for name, weight in weights.items() if name.startswith(prefix)}

    if prepared is not None:
        return (lambda index, _layer: prefixed(prepared.weights, index)), prepared.summary
    if not recipe.quantization.calibrated:
        return (lambda _index, _layer: {}), None
    quantizer, summary = layer_by_layer(source.model, sequences, recipe.quantization, device=device)
    return quantizer.quantize, summary
