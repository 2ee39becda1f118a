"""Each GGUF block format, carried into MatMulNBits without re-quantization, computes the `gguf` package's own
dequantization: onnxruntime runs the weight against the identity, on random blocks (degenerate ones included)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from gguf import GGMLQuantizationType
from gguf.quants import dequantize
from onnx import TensorProto, helper, numpy_helper

from phiexport.quantize.gguf_blocks import LOSSLESS, NBitsWeight, gguf_to_nbits, type_size

ROWS, COLS = 6, 512  # two K-quant super-blocks per row


def random_blocks(qtype: GGMLQuantizationType, rng: np.random.Generator) -> np.ndarray:
    """Random code bytes with finite fp16 scale and offset fields, a few blocks' scales zeroed."""
    count = ROWS * COLS // (256 if qtype.name.endswith("_K") else 32)
    blocks = rng.integers(0, 256, (count, type_size(qtype)), dtype=np.uint8)
    halves = {  # byte offsets of the fp16 fields: scale first, then min/dmin where the format has one
        GGMLQuantizationType.Q6_K: [type_size(qtype) - 2],
        GGMLQuantizationType.Q4_0: [0],
        GGMLQuantizationType.Q8_0: [0],
        GGMLQuantizationType.Q5_0: [0],
    }.get(qtype, [0, 2])
    for offset in halves:
        values = rng.uniform(-0.05, 0.05, count).astype(np.float16)
        values[:2] = 0.0  # a block whose every weight is its offset (or zero)
        blocks[:, offset : offset + 2] = values.view(np.uint8).reshape(count, 2)
    if qtype == GGMLQuantizationType.Q6_K:
        blocks[0, -18:-2] = 0  # zero sub-block scales
    return blocks.reshape(-1)


def onnxruntime_weight(weight: NBitsWeight) -> np.ndarray:
    """`[ROWS, COLS]` as MatMulNBits computes it: the identity times the weight."""
    inputs = ["x", "b", "scales"] + (["zero_points"] if weight.zero_points is not None else [])
    initializers = [numpy_helper.from_array(weight.packed, "b"), numpy_helper.from_array(weight.scales, "scales")]
    if weight.zero_points is not None:
        initializers.append(numpy_helper.from_array(weight.zero_points, "zero_points"))
    node = helper.make_node(
        "MatMulNBits", inputs, ["y"], domain="com.microsoft", K=COLS, N=ROWS, bits=weight.bits,
        block_size=weight.block_size,
    )  # fmt: skip
    graph = helper.make_graph(
        [node],
        "weight",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [COLS, COLS])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [COLS, ROWS])],
        initializers,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
    )
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"x": np.eye(COLS, dtype=np.float32)})
    return y.T


@pytest.mark.parametrize("qtype", sorted(LOSSLESS, key=lambda q: q.name), ids=lambda q: q.name)
def test_matmul_nbits_computes_ggufs_dequantization(qtype):
    data = random_blocks(qtype, np.random.default_rng(int(qtype)))
    expected = dequantize(data, qtype).reshape(ROWS, COLS)
    weight = gguf_to_nbits(data, qtype, ROWS, COLS)
    assert (weight.bits, weight.block_size) == LOSSLESS[qtype]
    found = onnxruntime_weight(weight)
    scale = np.abs(expected).max()
    # codes and scales are the file's; only a float zero point (−offset / scale) rounds, relative to the weights
    assert np.abs(weight.dequantize() - expected).max() <= 1e-6 * scale, qtype.name
    assert np.abs(found - expected).max() <= 1e-6 * scale, qtype.name


def test_q4_1_zero_point_reproduces_the_offset_to_float_rounding():
    """The issue's check: zero_point = −min / scale gives back `scale · code + min` to 1e-7 relative."""
    rng = np.random.default_rng(7)
    d, m = np.float32(rng.uniform(0.001, 0.05)), np.float32(rng.uniform(-0.3, 0.0))
    codes = rng.integers(0, 16, 32).astype(np.float32)
    zero_point = -m / d
    assert np.abs((codes - zero_point) * d - (d * codes + m)).max() <= 1e-7 * np.abs(d * codes + m).max()
