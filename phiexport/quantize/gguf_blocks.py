"""GGUF block formats as onnxruntime MatMulNBits weights, without re-quantization.

Every format here dequantizes as `scale · code + offset` per block of a row, which MatMulNBits computes as
`(code − zero_point) · scale`: the integer codes are kept, the scale is the block's, and the zero point is
`−offset / scale` (a float zero point where the offset is not a whole number of steps). The K-quants' super-blocks
unfold into their sub-blocks (32 weights, 16 for Q6_K). Codes wider than 4 bits are stored in 8 (MatMulNBits has
no 5- or 6-bit form), which is exact but larger.

The bit layouts are the `gguf` package's own: a format's codes are read by dequantizing the blocks with their
scales set to 1 and their offsets to 0, and its scales and offsets from the block headers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import Q4_K, dequantize

_HALF = np.dtype("<f2")


@dataclass(frozen=True)
class NBitsWeight:
    """MatMulNBits inputs for a weight of `rows` outputs × `cols` inputs."""

    bits: int
    block_size: int
    packed: np.ndarray  # uint8 [rows, blocks, block_size · bits / 8]
    scales: np.ndarray  # float32 [rows, blocks]
    zero_points: np.ndarray | None  # float32 [rows, blocks], uint8 [rows, blocks] at 8 bits, or None (the midpoint)

    def rows(self, order: np.ndarray) -> NBitsWeight:
        """The same weight with its rows (outputs) taken in `order`."""
        zero_points = None if self.zero_points is None else self.zero_points[order]
        return NBitsWeight(self.bits, self.block_size, self.packed[order], self.scales[order], zero_points)

    def dequantize(self) -> np.ndarray:
        """float32 `[rows, cols]`, as MatMulNBits computes it."""
        rows, blocks, _ = self.packed.shape
        codes = _unpack(self.packed, self.bits).reshape(rows, blocks, self.block_size).astype(np.float32)
        zero = 1 << (self.bits - 1) if self.zero_points is None else self.zero_points.astype(np.float32)
        return ((codes - np.broadcast_to(zero, (rows, blocks))[..., None]) * self.scales[..., None]).reshape(rows, -1)


# format → (bits MatMulNBits stores, codes' sub-block size). Q5_1 and Q5_K are missing: their 5-bit codes need
# 8-bit storage with a float zero point, which onnxruntime's CPU MatMulNBits refuses ("use uint8 zero points").
LOSSLESS = {
    GGMLQuantizationType.Q4_0: (4, 32),
    GGMLQuantizationType.Q4_1: (4, 32),
    GGMLQuantizationType.Q5_0: (8, 32),
    GGMLQuantizationType.Q8_0: (8, 32),
    GGMLQuantizationType.Q4_K: (4, 32),
    GGMLQuantizationType.Q6_K: (8, 16),
}


def gguf_to_nbits(data: np.ndarray, qtype: GGMLQuantizationType, rows: int, cols: int) -> NBitsWeight:
    """The MatMulNBits form of a GGUF tensor of `rows` × `cols` (its raw block bytes, `data`), exactly."""
    bits, block = LOSSLESS[qtype]
    blocks = np.ascontiguousarray(data, dtype=np.uint8).reshape(-1, type_size(qtype))
    scales, offsets = _scales_offsets(blocks, qtype)
    codes = dequantize(_unit_headers(blocks, qtype).reshape(-1), qtype).reshape(-1, block)
    codes = np.rint(codes - _code_shift(qtype)).astype(np.uint8)
    scales, offsets = scales.reshape(-1), offsets.reshape(-1)
    zero_points: np.ndarray | None
    constant = scales == 0  # every weight of the block is its offset: code 1, zero point 0, scale = offset
    if qtype in (GGMLQuantizationType.Q4_0, GGMLQuantizationType.Q8_0):
        zero_points = None  # offset −(midpoint) · scale: MatMulNBits' default zero point
    elif qtype in (GGMLQuantizationType.Q5_0, GGMLQuantizationType.Q6_K):
        zero_points = np.full(scales.shape, 16 if qtype == GGMLQuantizationType.Q5_0 else 32, np.uint8)
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            zero_points = np.where(constant, 0.0, -offsets / scales).astype(np.float32)
        codes[constant] = 1
        scales = np.where(constant, offsets, scales)
    per_row = cols // block
    return NBitsWeight(
        bits=bits,
        block_size=block,
        packed=_pack(codes, bits).reshape(rows, per_row, block * bits // 8),
        scales=scales.astype(np.float32).reshape(rows, per_row),
        zero_points=None if zero_points is None else zero_points.reshape(rows, per_row),
    )


def _scales_offsets(blocks: np.ndarray, qtype: GGMLQuantizationType) -> tuple[np.ndarray, np.ndarray]:
    """Each sub-block's scale and offset (`weight = scale · code + offset`), `[blocks, sub-blocks]` float32."""
    if qtype == GGMLQuantizationType.Q6_K:  # ql, qh, int8 sub-block scales[16], d
        sub = blocks[:, -18:-2].view(np.int8).astype(np.float32)
        return _field(blocks, type_size(qtype) - 2)[:, None] * sub, np.zeros_like(sub)
    d = _field(blocks, 0)[:, None]
    if qtype in (GGMLQuantizationType.Q4_0, GGMLQuantizationType.Q8_0, GGMLQuantizationType.Q5_0):
        return d, np.zeros_like(d)  # symmetric: the zero point is the code range's midpoint
    if qtype == GGMLQuantizationType.Q4_1:
        return d, _field(blocks, 2)[:, None]
    sc, mins = Q4_K.get_scale_min(blocks[:, 4:16])  # Q4_K: d, dmin, 6-bit sub-block scales and mins
    return d * sc.astype(np.float32), -_field(blocks, 2)[:, None] * mins.astype(np.float32)


def _unit_headers(blocks: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
    """The blocks with every scale 1 and every offset 0, so that dequantizing them gives their codes."""
    unit = blocks.copy()
    one = np.frombuffer(np.float16(1.0).tobytes(), np.uint8)
    if qtype == GGMLQuantizationType.Q6_K:
        unit[:, -2:] = one
        unit[:, -18:-2] = 1
        return unit
    unit[:, 0:2] = one
    if qtype in (GGMLQuantizationType.Q4_1, GGMLQuantizationType.Q4_K):
        unit[:, 2:4] = 0  # Q4_1's min, Q4_K's dmin
    if qtype == GGMLQuantizationType.Q4_K:
        unit[:, 4:16] = [1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1]  # 6-bit sub-block scales 1, mins 0
    return unit


def _code_shift(qtype: GGMLQuantizationType) -> int:
    """What `dequantize` of unit blocks subtracts from the stored code (added back to get it)."""
    return {
        GGMLQuantizationType.Q4_0: -8,
        GGMLQuantizationType.Q5_0: -16,
        GGMLQuantizationType.Q8_0: -128,
        GGMLQuantizationType.Q6_K: -32,
    }.get(qtype, 0)


def type_size(qtype: GGMLQuantizationType) -> int:
    """Bytes per (super-)block."""
    return GGML_QUANT_SIZES[qtype][1]


def _field(blocks: np.ndarray, offset: int) -> np.ndarray:
    """The fp16 field at byte `offset` of every block, as float32."""
    return blocks[:, offset : offset + 2].copy().view(_HALF).astype(np.float32)[:, 0]


def _pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """MatMulNBits packing: at 4 bits two codes a byte, the first in the low nibble."""
    flat = codes.reshape(-1)
    return (flat[0::2] | (flat[1::2] << 4)).astype(np.uint8) if bits == 4 else flat


def _unpack(packed: np.ndarray, bits: int) -> np.ndarray:
    flat = packed.reshape(-1)
    return np.stack([flat & 0x0F, flat >> 4], axis=-1).reshape(-1) if bits == 4 else flat
