"""Static QDQ quantization of an NPU body graph: uint16 activations from calibration, 4-bit block-wise weights.

onnxruntime's QNN quantization config calibrates and places the activation quantization; phiexport writes the
MatMul weights. onnxruntime's default for them is one scale per tensor, poor at 4 bits (docs/npu.md); one scale per
output channel was measured too coarse as well (rotated SmolLM2: mean KL 1.77, against 0.82 in blocks of 32), so
MatMul weights are symmetric int4 in blocks along the input axis (opset-21 blocked DequantizeLinear, which the HTP
runs). Weights are quantized from their values alone, so the prefill and decode graphs get identical weight tensors
and one context binary can hold them once.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from phiexport.architectures import linear_in_features
from phiexport.errors import BuildError, UsageError
from phiexport.quantize.calibration import FeedReader
from phiexport.quantize.grid import QuantizedWeight

WEIGHT_BITS = {4: "QInt4", 8: "QInt8"}
# Calibration samples whose intermediate tensors are held at once: onnxruntime's strided min/max merges each batch's
# ranges (exactly: min of mins), where its calibrator otherwise keeps every sample's tensors (8.2 GiB at Phi-4-mini
# width); its max_intermediate_outputs option cannot do this, since 1.32 clears a full batch without its ranges.
CALIBRATION_BATCH = 8


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


def matmul_weight_overrides(model: Any) -> dict[str, list[dict[str, Any]]]:
    """Per-tensor int8 overrides for every MatMul weight initializer of `model` (an onnx ModelProto): placeholders,
    cheap for onnxruntime to compute, that `write_block_weights` replaces by blocks."""
    from onnxruntime.quantization import QuantType

    initializers = {tensor.name for tensor in model.graph.initializer}
    return {
        node.input[1]: [{"quant_type": QuantType.QInt8, "symmetric": True}]
        for node in model.graph.node
        if node.op_type == "MatMul" and node.input[1] in initializers
    }


def quantize_body(
    fp32_path: Path,
    feeds: FeedReader,
    output: Path,
    *,
    weight_bits: int,
    block_size: int,
    bits_by_weight: dict[str, int] | None = None,
    calibrated: dict[str, QuantizedWeight] | None = None,
    providers: Sequence[str] = ("CPUExecutionProvider",),
) -> Path:
    """Write the QDQ form of `fp32_path` to `output` (external data beside it): activations calibrated on `feeds`
    by onnxruntime (on `providers`), MatMul weights in blocks at `weight_bits` (or their entry in `bits_by_weight`)."""
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
        placeholders = matmul_weight_overrides(graph)
        config = get_qnn_qdq_config(
            graph,
            feeds,
            activation_type=QuantType.QUInt16,
            weight_type=QuantType.QUInt8,  # norms and other small constants; MatMul weights are overridden
            init_overrides=placeholders,
            calibration_providers=list(providers),
        )
        config.use_external_data_format = True
        config.extra_options["CalibStridedMinMax"] = calibration_stride(len(feeds), CALIBRATION_BATCH)
        quantize(str(prepared), str(output), config)
        bits = {name: (bits_by_weight or {}).get(name, weight_bits) for name in placeholders}
        write_block_weights(output, prepared, bits, block_size=block_size, calibrated=calibrated or {})
    return output


def calibration_stride(samples: int, batch: int) -> int:
    """The largest batch of at most `batch` samples that divides `samples` (onnxruntime requires it to)."""
    return max(size for size in range(1, min(batch, samples) + 1) if samples % size == 0)


def write_block_weights(
    qdq_path: Path,
    fp32_path: Path,
    bits: dict[str, int],
    *,
    block_size: int,
    calibrated: dict[str, QuantizedWeight],
) -> None:
    """Replace each per-tensor MatMul weight of the QDQ graph `qdq_path` (in place) with symmetric blocks of
    `block_size` along the input axis, at `bits[name]` (opset-21 blocked DequantizeLinear, which the HTP runs).

    A weight in `calibrated` (fp32 initializer name → GPTQ/AWQ codes) keeps those codes; every other is rounded
    from its float values exactly as onnxruntime's blocked quantizer rounds (tests/quantize/test_static_qdq.py),
    which loops over every block and packs int4 in Python: 64 s per Phi-4-mini layer, under a second here.
    """
    import onnx
    from onnx import numpy_helper
    from onnxruntime.quantization.quant_utils import compute_scale_zp_blocked, quantize_nparray

    model = onnx.load(str(qdq_path), load_external_data=False)
    onnx.load_external_data_for_model(model, str(qdq_path.parent))
    floats = {tensor.name: tensor for tensor in onnx.load(str(fp32_path), load_external_data=False).graph.initializer}
    initializers = {tensor.name: tensor for tensor in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear" or (name := node.input[0].removesuffix("_quantized")) not in bits:
            continue
        qtype = onnx.TensorProto.INT4 if bits[name] == 4 else onnx.TensorProto.INT8
        if name in calibrated:
            codes, scales = _calibrated_blocks(calibrated[name], bits[name])
        else:
            weight = numpy_helper.to_array(floats[name], base_dir=str(fp32_path.parent))
            zero_points, scales = compute_scale_zp_blocked(weight, qtype, 0, block_size, True)
            expand = np.arange(weight.shape[0]) // block_size
            codes = quantize_nparray(qtype, weight, scales[expand], zero_points[expand])
        initializers[node.input[0]].CopyFrom(_integer_tensor(node.input[0], qtype, codes))
        initializers[node.input[1]].CopyFrom(numpy_helper.from_array(scales.astype(np.float32), node.input[1]))
        initializers[node.input[2]].CopyFrom(_integer_tensor(node.input[2], qtype, np.zeros(scales.shape, np.int8)))
        del node.attribute[:]
        node.attribute.extend(
            [onnx.helper.make_attribute("axis", 0), onnx.helper.make_attribute("block_size", block_size)]
        )
    data = qdq_path.with_name(f"{qdq_path.name}.data")
    qdq_path.unlink()
    data.unlink(missing_ok=True)
    onnx.save(model, str(qdq_path), save_as_external_data=True, all_tensors_to_one_file=True, location=data.name)


def _calibrated_blocks(weight: QuantizedWeight, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Signed codes `[K, N]` and scales `[blocks, N]` of GPTQ/AWQ codes (`[N, K]`, symmetric)."""
    if weight.grid.bits != bits or not weight.grid.symmetric:
        raise BuildError("a calibrated weight has another type than its QDQ placeholder", "report a bug")
    blocks = torch.arange(weight.codes.shape[1]) // weight.grid.block_size
    signed = weight.codes.to(torch.int16) - weight.zero_points.to(torch.int16)[:, blocks]
    return signed.T.contiguous().numpy().astype(np.int8), weight.scales.T.contiguous().numpy()


def _integer_tensor(name: str, qtype: int, values: np.ndarray) -> Any:
    """An INT8 tensor, or INT4 packed two to a byte (low nibble first), as onnx stores them."""
    import onnx

    flat = np.asarray(values, dtype=np.int8).reshape(-1)
    if qtype == onnx.TensorProto.INT4:
        flat = np.append(flat, np.int8(0)) if flat.size % 2 else flat
        flat = ((flat[0::2] & 0x0F) | ((flat[1::2] & 0x0F) << 4)).astype(np.uint8)
    return onnx.helper.make_tensor(name, qtype, values.shape, flat.tobytes(), raw=True)
