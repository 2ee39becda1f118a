"""Each GGUF block format, carried into MatMulNBits without re-quantization, computes the `gguf` package's own
dequantization: onnxruntime runs the weight against the identity, on random blocks (degenerate ones included)."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType
from gguf.quants import dequantize

from phiexport.quantize.gguf_blocks import LOSSLESS, gguf_to_nbits, type_size
from tests.matmul_nbits import matmul_nbits

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


@pytest.mark.parametrize("qtype", sorted(LOSSLESS, key=lambda q: q.name), ids=lambda q: q.name)
def test_matmul_nbits_computes_ggufs_dequantization(qtype):
    data = random_blocks(qtype, np.random.default_rng(int(qtype)))
    expected = dequantize(data, qtype).reshape(ROWS, COLS)
    weight = gguf_to_nbits(data, qtype, ROWS, COLS)
    assert (weight.bits, weight.block_size) == LOSSLESS[qtype]
    identity = np.eye(COLS, dtype=np.float32)
    found = matmul_nbits(
        identity, weight.packed, weight.scales, weight.zero_points, bits=weight.bits, block=weight.block_size
    ).T
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
