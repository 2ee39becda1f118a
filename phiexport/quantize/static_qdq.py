"""Static QDQ quantization of an NPU body graph: uint16 activations from calibration, 4-bit block-wise weights.

onnxruntime's QNN quantization config does the work; phiexport only says which tensors are weights and how. Its
default for MatMul weights is one scale per tensor, poor at 4 bits (docs/npu.md); one scale per output channel was
measured too coarse as well (rotated SmolLM2: mean KL 1.77, against 0.82 in blocks of 32), so MatMul weights are
symmetric int4 in blocks along the input axis (opset-21 blocked DequantizeLinear, which the HTP runs). Weights are
quantized from their values alone, so the prefill and decode graphs get identical weight tensors and one context
binary can hold them once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from phiexport.architectures import linear_in_features
from phiexport.errors import UsageError
from phiexport.quantize.calibration import Feed, FeedReader

WEIGHT_BITS = {4: "QInt4", 8: "QInt8"}


def check_htp_blocks(config: dict[str, Any], block_size: int) -> None:
    """Refuse block sizes the HTP mis-runs: it returns wrong results without an error when blocks do not divide a
    weight row, and its integer block encoding crashes at run time on an odd number of blocks per row (measured with
    onnxruntime-qnn 2.7; SmolLM2's width 576 at block 64 gives 9)."""
    for width in sorted(linear_in_features(config)):
        if width % block_size or (width // block_size) % 2:
            raise UsageError(
                f"the NPU needs every weight row to split into an even number of {block_size}-wide blocks; "
                f"width {width} does not",
                "choose a block_size that does, e.g. 32",
            )


def matmul_weight_overrides(
    model: Any, bits: int, block_size: int, bits_by_weight: dict[str, int] | None = None
) -> dict[str, list[dict[str, Any]]]:
    """Symmetric overrides for every MatMul weight initializer of `model` (an onnx ModelProto): blocks of
    `block_size` along the input axis, or one scale per output channel when `block_size` is 0; `bits`, or the
    weight's own entry in `bits_by_weight` (a measured int4/int8 mix)."""
    from onnxruntime.quantization import QuantType

    initializers = {tensor.name for tensor in model.graph.initializer}
    chosen = bits_by_weight or {}
    return {
        node.input[1]: [
            {
                "quant_type": getattr(QuantType, WEIGHT_BITS[chosen.get(node.input[1], bits)]),
                "symmetric": True,
                "axis": 0 if block_size else 1,
            }
        ]
        for node in model.graph.node
        if node.op_type == "MatMul" and node.input[1] in initializers
    }


def quantize_body(
    fp32_path: Path,
    feeds: list[Feed],
    output: Path,
    *,
    weight_bits: int,
    block_size: int,
    bits_by_weight: dict[str, int] | None = None,
) -> Path:
    """Write the QDQ form of `fp32_path` to `output` (external data beside it), calibrated on `feeds`."""
    import tempfile

    import onnx
    from onnxruntime.quantization import QuantType, quantize
    from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config, qnn_preprocess_model

    with tempfile.TemporaryDirectory(dir=output.parent) as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        if not qnn_preprocess_model(
            str(fp32_path),
            str(prepared),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            external_data_location="prepared.data",
        ):
            prepared = fp32_path
        graph = onnx.load(str(prepared), load_external_data=False)
        config = get_qnn_qdq_config(
            graph,
            FeedReader(feeds),
            activation_type=QuantType.QUInt16,
            weight_type=QuantType.QUInt8,  # norms and other small constants; MatMul weights use the overrides
            init_overrides=matmul_weight_overrides(graph, weight_bits, block_size, bits_by_weight),
        )
        config.use_external_data_format = True
        config.extra_options["BlockSize"] = block_size  # opset-21 blocked DequantizeLinear ...
        config.extra_options["UseQDQContribOps"] = False  # ... which only the ONNX domain has (graph moves to opset 21)
        quantize(str(prepared), str(output), config)
    return output
