"""Tensors stored in a graph at the width their source holds them, put together by nodes that onnxruntime folds into
constants when the session opens: fp16 block headers behind a Cast, K-quants' integer steps times fp16 units, 5- and
6-bit codes as low nibbles and packed high bits, repeated scales, a uniform zero point as one byte. The file then
holds about what the source's blocks do; the opened session holds what MatMulNBits reads.

`FoldedTensors` collects the nodes and initializers a graph rewrite writes (quantize/imported.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from phiexport.quantize.gguf_blocks import BlockWeight, Steps
from phiexport.quantize.onnx_weights import pack_bits, pack_nibbles


@dataclass(kw_only=True)
class FoldedTensors:
    """The nodes and initializers written so far, and how to write them."""

    nodes: list[Any] = field(default_factory=list)
    initializers: list[Any] = field(default_factory=list)

    def _repeated(self, values: str, times: int, name: str) -> str:
        """`[rows, blocks · times]`: each column of `values` `[rows, blocks]` `times` over, by nodes that onnxruntime
        folds when the session opens."""
        axis = self._constant(f"{name}/repeat_axis", np.array([-1]))
        column = self._node("Unsqueeze", [values, axis], f"{name}/scales_column", f"{name}/UnsqueezeScales")
        ones = self._constant(f"{name}/repeat_shape", np.array([1, 1, times]))
        wide = self._node("Expand", [column, ones], f"{name}/scales_repeated", f"{name}/RepeatScales")
        flat = self._constant(f"{name}/repeat_flat", np.array([0, -1]))
        return self._node("Reshape", [wide, flat], f"{name}/halved_scales", f"{name}/ReshapeScales")

    def _zero_points(self, name: str, zeros: np.ndarray, bits: int) -> str:
        """MatMulNBits' zero points for `zeros` uint8 `[rows, blocks]` (4-bit ones packed two a byte, an odd row
        padded with the midpoint); one byte widened by an Expand that onnxruntime folds when the session opens where
        every block has the same (symmetric formats: Q5_0, Q6_K)."""
        if bits == 4 and zeros.shape[1] % 2:
            zeros = np.pad(zeros, ((0, 0), (0, 1)), constant_values=8)
        packed = zeros if bits == 8 else pack_nibbles(zeros)
        if np.all(packed == packed.flat[0]):
            value = self._initializer(f"{name}_value", packed.flat[:1])
            shape = self._constant(f"{name}_shape", np.array(packed.shape))
            return self._node("Expand", [value, shape], name, f"{name}/Expand")
        return self._initializer(name, packed)

    @staticmethod
    def _blocks(codes: np.ndarray, bits: int, block: int) -> np.ndarray:
        """MatMulNBits' B layout `[rows, blocks, block · bits / 8]` of `codes` `[rows, K]` (4 or 8 bits)."""
        return (codes if bits == 8 else pack_nibbles(codes)).reshape(codes.shape[0], -1, block * bits // 8)

    def _compact_codes(self, name: str, weight: BlockWeight, *, halves: bool) -> str:
        """MatMulNBits' B for 5- and 6-bit codes (in halves, `[high + 8 | low]` packed as nibbles; else one code a
        byte), stored at the codes' own width: low nibbles two a byte, the 1 or 2 high bits 8 or 4 a byte. Bit
        operations that onnxruntime folds when the session opens put them back together; the file holds 5.0 or
        6.0 bits a code where 8-bit MatMulNBits codes or two nibbles take 8."""
        rows, width = weight.codes.shape
        low = self._initializer(f"{name}_low", pack_nibbles(weight.codes & 0x0F))
        high_bits = weight.bits - 4
        high_packed = self._initializer(f"{name}_high", pack_bits(weight.codes >> 4, high_bits))
        high = self._unpacked(high_packed, high_bits, width)
        if halves:
            lift = self._initializer(f"{name}/lift", np.array(8, np.uint8))
            lifted = self._node("BitwiseOr", [high, lift], f"{name}/high_lifted", f"{name}/Lift")
            joined = self._node(
                "Concat", [self._nibbles(lifted, width), low], f"{name}/halves", f"{name}/Halves", axis=1
            )
            block_bytes = weight.block_size // 2
        else:
            low_codes = self._unpacked(low, 4, width)
            four = self._initializer(f"{name}/four", np.array(4, np.uint8))
            lifted = self._node("BitShift", [high, four], f"{name}/high_shifted", f"{name}/ShiftHigh", direction="LEFT")
            joined = self._node("BitwiseOr", [low_codes, lifted], f"{name}/joined", f"{name}/Join")
            block_bytes = weight.block_size
        shape = self._constant(f"{name}/blocks_shape", np.array([rows, -1, block_bytes]))
        return self._node("Reshape", [joined, shape], name, f"{name}/Reshape")

    def _unpacked(self, packed: str, bits: int, width: int) -> str:
        """uint8 `[rows, width]` of the `bits`-wide values packed along the rows of `packed`, the first in the lowest
        bits."""
        shape = self._constant(f"{packed}/unpack_shape", np.array([0, -1, 1]))
        grouped = self._node("Reshape", [packed, shape], f"{packed}/grouped", f"{packed}/Group")
        shifts = self._initializer(f"{packed}/shifts", np.arange(0, 8, bits, dtype=np.uint8))
        shifted = self._node("BitShift", [grouped, shifts], f"{packed}/shifted", f"{packed}/Shift", direction="RIGHT")
        mask = self._initializer(f"{packed}/mask", np.array((1 << bits) - 1, np.uint8))
        values = self._node("BitwiseAnd", [shifted, mask], f"{packed}/values", f"{packed}/Mask")
        flat = self._constant(f"{packed}/flat_shape", np.array([0, width]))
        return self._node("Reshape", [values, flat], f"{packed}/unpacked", f"{packed}/Flatten")

    def _nibbles(self, values: str, width: int) -> str:
        """`[rows, width / 2]` bytes of the 4-bit `values` `[rows, width]` two a byte, the first in the low nibble."""
        pairs_shape = self._constant(f"{values}/pairs_shape", np.array([0, -1, 2]))
        pairs = self._node("Reshape", [values, pairs_shape], f"{values}/pairs", f"{values}/Pairs")
        zero, one, two = (self._constant(f"{values}/at_{v}", np.array([v])) for v in (0, 1, 2))
        axis = two  # the pair's axis
        first = self._node("Slice", [pairs, zero, one, axis], f"{values}/first", f"{values}/First")
        second = self._node("Slice", [pairs, one, two, axis], f"{values}/second", f"{values}/Second")
        four = self._initializer(f"{values}/four", np.array(4, np.uint8))
        up = self._node("BitShift", [second, four], f"{values}/second_up", f"{values}/ShiftSecond", direction="LEFT")
        both = self._node("BitwiseOr", [first, up], f"{values}/bytes", f"{values}/Bytes")
        flat = self._constant(f"{values}/bytes_shape", np.array([0, width // 2]))
        return self._node("Reshape", [both, flat], f"{values}/packed", f"{values}/Flatten")

    def _float(self, name: str, values: np.ndarray, steps: Steps | None = None) -> str:
        """A float32 tensor of `values`, stored as its integer `steps` of fp16 units, or as fp16, and widened
        back, where that loses nothing."""
        if steps is not None and np.array_equal(steps.values(), values):
            return self._stepped(name, steps)
        half = values.astype(np.float16)
        if np.array_equal(half.astype(np.float32), values):
            from onnx import TensorProto

            stored = self._initializer(f"{name}_fp16", half)
            return self._node("Cast", [stored], name, f"{name}/Cast", to=TensorProto.FLOAT)
        return self._initializer(name, values.astype(np.float32))

    def _stepped(self, name: str, steps: Steps) -> str:
        """`units · steps` `[rows, blocks]`: each fp16 unit times its group's integer steps, in fp32."""
        from onnx import TensorProto

        stored = self._initializer(f"{name}_steps", steps.steps)
        wide = self._node("Cast", [stored], f"{name}/steps", f"{name}/CastSteps", to=TensorProto.FLOAT)
        grouped_shape = self._constant(f"{name}/grouped_shape", np.array([0, -1, steps.group]))
        grouped = self._node("Reshape", [wide, grouped_shape], f"{name}/grouped", f"{name}/ReshapeSteps")
        units = self._initializer(f"{name}_units_fp16", steps.units.astype(np.float16)[..., None])
        wide_units = self._node("Cast", [units], f"{name}/units", f"{name}/CastUnits", to=TensorProto.FLOAT)
        product = self._node("Mul", [grouped, wide_units], f"{name}/products", f"{name}/MulUnits")
        flat_shape = self._constant(f"{name}/flat_shape", np.array([0, -1]))
        return self._node("Reshape", [product, flat_shape], name, f"{name}/Reshape")

    def _constant(self, name: str, values: np.ndarray) -> str:
        return self._initializer(name, values.astype(np.int64) if values.dtype.kind == "i" else values)

    def _initializer(self, name: str, values: np.ndarray) -> str:
        from onnx import numpy_helper

        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(values), name))
        return name

    def _node(self, op: str, inputs: list[str], output: str, name: str, domain: str = "", **attrs: Any) -> str:
        from onnx import helper

        self.nodes.append(helper.make_node(op, inputs, [output], name=name, domain=domain, **attrs))
        return output
