"""Write calibrated integer codes into exported graphs, so a package runs exactly the weights GPTQ/AWQ chose.

The exporters quantize from float weights on their own; they are given the dequantized weights (which their
rounding reproduces closely, never exactly) and then their integers are replaced by ours:

- CPU: the genai builder's MatMulNBits nodes (B, scales, zero points), matched to HF linears by the builder's node
  names; every match is checked against the builder's own rounding of the same weights.
- NPU: `match_float_weights` finds the HF linear each float initializer of a layer's graph holds, by its values;
  quantize/static_qdq.py writes those codes as the graph's blocked DequantizeLinear weights.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from phiexport.errors import BuildError
from phiexport.quantize.grid import QuantizedWeight

# builder node path → HF linears whose rows it stacks (first alternative present wins). A (name, part) pair takes
# the node's N rows from a fused HF linear: "head" the first N, "middle" the N before the last N, "tail" the last N
# (fused qkv is [q; k; v] with k and v equally wide; fused gate_up is [gate; up]).
_BUILDER_SOURCES: dict[str, tuple[tuple[Any, ...], ...]] = {
    "attn/qkv_proj": (("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), ("self_attn.qkv_proj",)),
    "attn/q_proj": (("self_attn.q_proj",), (("self_attn.qkv_proj", "head"),)),  # DirectML keeps q/k/v apart
    "attn/k_proj": (("self_attn.k_proj",), (("self_attn.qkv_proj", "middle"),)),
    "attn/v_proj": (("self_attn.v_proj",), (("self_attn.qkv_proj", "tail"),)),
    "attn/o_proj": (("self_attn.o_proj",),),
    "mlp/gate_proj": (("mlp.gate_proj",), (("mlp.gate_up_proj", "head"),)),
    "mlp/up_proj": (("mlp.up_proj",), (("mlp.gate_up_proj", "tail"),)),
    "mlp/down_proj": (("mlp.down_proj",),),
}
_NODE = re.compile(r"^/model/layers\.(\d+)/(attn/\w+|mlp/\w+)/MatMul")
MATCH_TOLERANCE = 0.25  # ‖ours − builder's‖ / ‖builder's‖ when both round the same dequantized weight


def builder_sources(node_name: str, rows: int, row_counts: Mapping[str, int]) -> list[tuple[str, slice]] | None:
    """The HF linears (module names, and which of their rows) the builder's node `node_name` of `rows` outputs
    stacks, among those `row_counts` names with their row counts; None for a node that is not a decoder linear."""
    match = _NODE.match(node_name)
    if not match or match.group(2) not in _BUILDER_SOURCES:
        return None
    prefix = f"model.layers.{match.group(1)}."
    for alternative in _BUILDER_SOURCES[match.group(2)]:
        sources = []
        for source in alternative:
            name, part = (source, None) if isinstance(source, str) else source
            name = prefix + name
            if name not in row_counts:
                break
            total = row_counts[name]
            start = {None: 0, "head": 0, "middle": total - 2 * rows, "tail": total - rows}[part]
            sources.append((name, slice(start, total if part is None else start + rows)))
        else:
            return sources
    return None


def builder_weight(node_name: str, rows: int, weights: dict[str, QuantizedWeight]) -> QuantizedWeight | None:
    """The codes for the builder's MatMulNBits node `node_name` (`rows` outputs), stacked from or cut out of HF
    linears; None if not quantized."""
    counts = {name: weight.codes.shape[0] for name, weight in weights.items()}
    sources = builder_sources(node_name, rows, counts)
    if sources is None:
        return None
    return _stack([weights[name].rows(part.start, part.stop) for name, part in sources])


def write_matmul_nbits(model_path: Path, weights: dict[str, QuantizedWeight]) -> dict[str, int]:
    """Replace the MatMulNBits weights of the builder's `model_path` (in place) with `weights`; counts by bits."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(model_path))
    initializers = {tensor.name: tensor for tensor in model.graph.initializer}
    counts: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type != "MatMulNBits":
            continue
        attrs = {attribute.name: attribute for attribute in node.attribute}
        weight = builder_weight(node.name, attrs["N"].i, weights)
        if weight is None and node.name.startswith("/lm_head/"):
            continue  # the LM head keeps the builder's rounding (see quantize/calibrated.py)
        if weight is None:
            raise BuildError(f"no calibrated weight for the builder's node {node.name}", "report a bug")
        builder = _dequantize_nbits(node, initializers, attrs)
        ours = weight.dequantize().numpy()
        if builder.shape != ours.shape:
            raise BuildError(f"{node.name}: builder weight {builder.shape} is not {ours.shape}", "report a bug")
        drift = float(np.linalg.norm(ours - builder)) / max(float(np.linalg.norm(builder)), 1e-12)
        if drift > MATCH_TOLERANCE:
            raise BuildError(
                f"{node.name}: calibrated weight differs from the builder's by {drift:.2f} (relative)", "report a bug"
            )
        grid = weight.grid
        packed, scales, zero_points = pack_matmul_nbits(weight)
        scale_type = onnx.helper.tensor_dtype_to_np_dtype(initializers[node.input[2]].data_type)  # fp16 on DirectML
        initializers[node.input[1]].CopyFrom(numpy_helper.from_array(packed, node.input[1]))
        initializers[node.input[2]].CopyFrom(numpy_helper.from_array(scales.astype(scale_type), node.input[2]))
        if grid.symmetric:
            del node.input[3:]
        else:
            name = node.input[3] if len(node.input) > 3 and node.input[3] else f"{node.input[1]}_zero_points"
            if name in initializers:
                initializers[name].CopyFrom(numpy_helper.from_array(zero_points, name))
            else:
                model.graph.initializer.append(numpy_helper.from_array(zero_points, name))
            del node.input[3:]
            node.input.append(name)
        attrs["bits"].i = grid.bits
        attrs["block_size"].i = grid.block_size
        counts[f"int{grid.bits}"] = counts.get(f"int{grid.bits}", 0) + 1
    save_with_external_data(model, model_path)
    return counts


def pack_matmul_nbits(weight: QuantizedWeight) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MatMulNBits inputs: B `[N, blocks, block_size·bits/8]` uint8 (low nibble first), scales `[N, blocks]`
    float32, zero points `[N, ⌈blocks·bits/8⌉]` uint8 (packed like B at 4 bits)."""
    grid = weight.grid
    rows, width = weight.codes.shape
    blocks = grid.blocks(width)
    codes = weight.codes.numpy().astype(np.uint8)
    padded = np.full((rows, blocks * grid.block_size), grid.symmetric_zero, dtype=np.uint8)
    padded[:, :width] = codes
    zero_points = weight.zero_points.numpy().astype(np.uint8)
    if grid.bits == 4:
        packed = pack_nibbles(padded).reshape(rows, blocks, grid.block_size // 2)
        if blocks % 2:
            zero_points = np.concatenate([zero_points, np.full((rows, 1), grid.symmetric_zero, np.uint8)], axis=1)
        zero_points = pack_nibbles(zero_points)
    else:
        packed = padded.reshape(rows, blocks, grid.block_size)
    return packed, weight.scales.numpy().astype(np.float32), zero_points


def match_float_weights(fp32_path: Path, weights: dict[str, QuantizedWeight]) -> dict[str, QuantizedWeight]:
    """The calibrated weight each 2-D initializer of the float graph `fp32_path` holds, by initializer name."""
    import onnx
    from onnx import numpy_helper

    rows_of = _row_index(weights)
    found = {}
    for tensor in onnx.load(str(fp32_path)).graph.initializer:
        array = numpy_helper.to_array(tensor)
        if array.ndim == 2 and (weight := _find_rows(array.T, rows_of, weights)) is not None:
            found[tensor.name] = weight
    return found


def _row_index(weights: dict[str, QuantizedWeight]) -> dict[bytes, tuple[str, int]]:
    index: dict[bytes, tuple[str, int]] = {}
    for name, weight in weights.items():
        restored = weight.dequantize().numpy().astype(np.float32)
        for row in range(restored.shape[0]):
            index.setdefault(restored[row].tobytes(), (name, row))
    return index


def _find_rows(
    matrix: np.ndarray, rows_of: dict[bytes, tuple[str, int]], weights: dict[str, QuantizedWeight]
) -> QuantizedWeight | None:
    first = rows_of.get(np.ascontiguousarray(matrix[0], dtype=np.float32).tobytes())
    if first is None:
        return None
    name, start = first
    candidate = weights[name].rows(start, start + matrix.shape[0])
    if candidate.codes.shape != matrix.shape or not np.array_equal(candidate.dequantize().numpy(), matrix):
        return None
    return candidate


def _dequantize_nbits(node: Any, initializers: dict[str, Any], attrs: dict[str, Any]) -> np.ndarray:
    from onnx import numpy_helper

    bits, block, width = attrs["bits"].i, attrs["block_size"].i, attrs["K"].i
    packed = numpy_helper.to_array(initializers[node.input[1]])
    rows = packed.shape[0]
    codes = _unpack_nibbles(packed.reshape(rows, -1)) if bits == 4 else packed.reshape(rows, -1)
    scales = numpy_helper.to_array(initializers[node.input[2]]).reshape(rows, -1)
    if len(node.input) > 3 and node.input[3]:
        zeros = numpy_helper.to_array(initializers[node.input[3]]).reshape(rows, -1)
        zeros = _unpack_nibbles(zeros)[:, : scales.shape[1]] if bits == 4 else zeros
    else:
        zeros = np.full(scales.shape, 1 << (bits - 1))
    expand = np.arange(codes.shape[1]) // block
    return ((codes.astype(np.float32) - zeros[:, expand]) * scales[:, expand])[:, :width]


def pack_nibbles(codes: np.ndarray) -> np.ndarray:
    """MatMulNBits' 4-bit packing along rows: two codes a byte, the first in the low nibble."""
    return (codes[:, 0::2] & 0x0F) | ((codes[:, 1::2] & 0x0F) << 4)


def pack_bits(values: np.ndarray, bits: int) -> np.ndarray:
    """`bits`-wide values (1, 2 or 4) packed along rows, 8 / bits a byte, the first in the lowest bits."""
    per_byte = 8 // bits
    grouped = values.reshape(values.shape[0], -1, per_byte).astype(np.uint8)
    shifts = np.arange(0, 8, bits, dtype=np.uint8)
    return np.bitwise_or.reduce(grouped << shifts, axis=2).astype(np.uint8)


def _unpack_nibbles(packed: np.ndarray) -> np.ndarray:
    return np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(packed.shape[0], -1)


def _stack(parts: list[QuantizedWeight]) -> QuantizedWeight:
    if len(parts) == 1:
        return parts[0]
    return QuantizedWeight(
        torch.cat([part.codes for part in parts]),
        torch.cat([part.scales for part in parts]),
        torch.cat([part.zero_points for part in parts]),
        parts[0].grid,
    )


def save_with_external_data(model: Any, path: Path) -> None:
    """Save `model` at `path` with its tensors in the one data file beside it, replacing both."""
    import onnx

    data = path.with_name(f"{path.name}.data") if path.with_name(f"{path.name}.data").exists() else None
    location = data.name if data else f"{path.stem}.data"
    for stale in (path, path.with_name(location)):
        stale.unlink(missing_ok=True)
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=location)
