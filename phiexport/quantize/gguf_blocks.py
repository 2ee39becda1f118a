"""GGUF block formats as integer codes with per-block scales and mins, without re-quantization.

Every format here dequantizes as `scale · code + min` per block of a row, with unsigned codes: the signed formats'
codes are shifted up and their min is −shift · scale. The K-quants' super-blocks unfold into their sub-blocks
(32 weights, 16 for Q6_K). quantize/imported.py writes these as MatMulNBits.

The bit layouts are the `gguf` package's own: a format's codes are read by dequantizing the blocks with their
scales set to 1 and their offsets to 0, and its scales and mins from the block headers. The K-quants' sub-block
scales and mins are small integers times an fp16 unit per super-block (`Steps`), which the package stores as such.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import Q4_K, dequantize

_HALF = np.dtype("<f2")
Q = GGMLQuantizationType


@dataclass(frozen=True)
class Steps:
    """Per-block values that are integer steps of an fp16 unit shared by `group` consecutive blocks: a K-quant's
    sub-block scales (`d · sc`) and mins (`−dmin · m`), one byte a block where their fp32 products take four."""

    units: np.ndarray  # float32, each an fp16 value, [rows, blocks / group]
    steps: np.ndarray  # uint8 or int8 [rows, blocks]

    @property
    def group(self) -> int:
        return self.steps.shape[1] // self.units.shape[1]

    def values(self) -> np.ndarray:
        """float32 `[rows, blocks]`, the same products as the format's own dequantization."""
        rows, blocks = self.steps.shape
        grouped = self.steps.reshape(rows, -1, self.group).astype(np.float32)
        return (self.units[..., None] * grouped).reshape(rows, blocks)

    def take_rows(self, rows: np.ndarray | slice) -> Steps:
        return Steps(self.units[rows], self.steps[rows])

    @staticmethod
    def stack(parts: list[Steps | None]) -> Steps | None:
        """The parts' rows one after another; None unless every part has steps of one type and group."""
        present = [part for part in parts if part is not None]
        if len(present) < len(parts) or len({(part.group, part.steps.dtype) for part in present}) != 1:
            return None
        return Steps(np.concatenate([part.units for part in present]), np.concatenate([p.steps for p in present]))


@dataclass(frozen=True)
class BlockWeight:
    """A weight of `rows` outputs × `cols` inputs: `scales · codes + mins`, blocks of `block_size` along a row."""

    bits: int  # width of the codes (values 0 … 2^bits − 1)
    block_size: int
    codes: np.ndarray  # uint8 [rows, cols]
    scales: np.ndarray  # float32 [rows, cols / block_size]
    mins: np.ndarray  # float32 [rows, cols / block_size]
    scale_steps: Steps | None = None  # `scales` as integer steps (the K-quants), equal to them
    min_steps: Steps | None = None  # `mins` likewise

    def take_rows(self, rows: np.ndarray | slice) -> BlockWeight:
        """The same weight with only the outputs `rows`, in that order."""
        return BlockWeight(
            self.bits,
            self.block_size,
            self.codes[rows],
            self.scales[rows],
            self.mins[rows],
            None if self.scale_steps is None else self.scale_steps.take_rows(rows),
            None if self.min_steps is None else self.min_steps.take_rows(rows),
        )

    def dequantize(self) -> np.ndarray:
        """float32 `[rows, cols]`."""
        rows, cols = self.codes.shape
        blocked = self.codes.reshape(rows, -1, self.block_size).astype(np.float32)
        return (blocked * self.scales[..., None] + self.mins[..., None]).reshape(rows, cols)

    @staticmethod
    def stack(parts: list[BlockWeight]) -> BlockWeight | None:
        """The parts' rows one after another; None unless they share a block size (codes widen to the widest)."""
        if len({part.block_size for part in parts}) != 1:
            return None
        return BlockWeight(
            max(part.bits for part in parts),
            parts[0].block_size,
            np.concatenate([part.codes for part in parts]),
            np.concatenate([part.scales for part in parts]),
            np.concatenate([part.mins for part in parts]),
            Steps.stack([part.scale_steps for part in parts]),
            Steps.stack([part.min_steps for part in parts]),
        )


# format → (code width, block size). Q2_K/Q3_K and the i-quants (codebooks) are re-quantized instead.
LOSSLESS = {
    Q.Q4_0: (4, 32),
    Q.Q4_1: (4, 32),
    Q.Q5_0: (5, 32),
    Q.Q5_1: (5, 32),
    Q.Q8_0: (8, 32),
    Q.Q4_K: (4, 32),
    Q.Q5_K: (5, 32),
    Q.Q6_K: (6, 16),
}
_SIGNED_SHIFT = {Q.Q4_0: 8, Q.Q5_0: 16, Q.Q8_0: 128, Q.Q6_K: 32}  # symmetric formats: code = stored + shift


def gguf_to_blocks(data: np.ndarray, qtype: GGMLQuantizationType, rows: int, cols: int) -> BlockWeight:
    """The codes, scales and mins of a GGUF tensor of `rows` × `cols` (its raw block bytes, `data`), exactly."""
    bits, block = LOSSLESS[qtype]
    blocks = np.ascontiguousarray(data, dtype=np.uint8).reshape(-1, type_size(qtype))
    scales, mins = _scales_mins(blocks, qtype)
    shift = _SIGNED_SHIFT.get(qtype, 0)
    codes = dequantize(_unit_headers(blocks, qtype).reshape(-1), qtype)
    scale_steps, min_steps = _steps(blocks, qtype, rows)
    return BlockWeight(
        bits=bits,
        block_size=block,
        codes=np.rint(codes + shift).astype(np.uint8).reshape(rows, cols),
        scales=scales.reshape(rows, cols // block),
        mins=(mins - shift * scales).astype(np.float32).reshape(rows, cols // block),
        scale_steps=scale_steps,
        min_steps=min_steps if shift == 0 else None,  # Q6_K's mins are −32 · scales, which offsets express
    )


def _scales_mins(blocks: np.ndarray, qtype: GGMLQuantizationType) -> tuple[np.ndarray, np.ndarray]:
    """Each (sub-)block's scale and offset (`weight = scale · stored code + offset`), `[blocks, sub-blocks]`."""
    if qtype == Q.Q6_K:  # ql, qh, int8 sub-block scales[16], d
        sub = blocks[:, -18:-2].view(np.int8).astype(np.float32)
        scales = _field(blocks, type_size(qtype) - 2)[:, None] * sub
        return scales, np.zeros_like(scales)
    d = _field(blocks, 0)[:, None]
    if qtype in (Q.Q4_0, Q.Q5_0, Q.Q8_0):
        return d, np.zeros_like(d)
    if qtype in (Q.Q4_1, Q.Q5_1):
        return d, _field(blocks, 2)[:, None]
    sc, mins = Q4_K.get_scale_min(blocks[:, 4:16])  # Q4_K and Q5_K: d, dmin, 6-bit sub-block scales and mins
    return d * sc.astype(np.float32), -_field(blocks, 2)[:, None] * mins.astype(np.float32)


def _steps(blocks: np.ndarray, qtype: GGMLQuantizationType, rows: int) -> tuple[Steps | None, Steps | None]:
    """The K-quants' sub-block scales and mins as integer steps of their super-block's fp16 `d` and `dmin`."""
    if qtype == Q.Q6_K:
        units = _field(blocks, type_size(qtype) - 2).reshape(rows, -1)
        return Steps(units, blocks[:, -18:-2].view(np.int8).reshape(rows, -1)), None
    if qtype not in (Q.Q4_K, Q.Q5_K):
        return None, None
    sc, mins = Q4_K.get_scale_min(blocks[:, 4:16])
    return (
        Steps(_field(blocks, 0).reshape(rows, -1), sc.astype(np.uint8).reshape(rows, -1)),
        Steps(-_field(blocks, 2).reshape(rows, -1), mins.astype(np.uint8).reshape(rows, -1)),
    )


def _unit_headers(blocks: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
    """The blocks with every scale 1 and every offset 0, so that dequantizing them gives their codes."""
    unit = blocks.copy()
    one = np.frombuffer(np.float16(1.0).tobytes(), np.uint8)
    if qtype == Q.Q6_K:
        unit[:, -2:] = one
        unit[:, -18:-2] = 1
        return unit
    unit[:, 0:2] = one
    if qtype in (Q.Q4_1, Q.Q5_1, Q.Q4_K, Q.Q5_K):
        unit[:, 2:4] = 0  # the min, or the K-quants' dmin
    if qtype in (Q.Q4_K, Q.Q5_K):
        unit[:, 4:16] = [1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1]  # 6-bit sub-block scales 1, mins 0
    return unit


def type_size(qtype: GGMLQuantizationType) -> int:
    """Bytes per (super-)block."""
    return GGML_QUANT_SIZES[qtype][1]


def _field(blocks: np.ndarray, offset: int) -> np.ndarray:
    """The fp16 field at byte `offset` of every block, as float32."""
    return blocks[:, offset : offset + 2].copy().view(_HALF).astype(np.float32)[:, 0]
