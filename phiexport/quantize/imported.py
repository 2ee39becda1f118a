"""Carry a pre-quantized checkpoint's integers into the genai builder's CPU graph.

Each decoder linear and the LM head the builder wrote as MatMulNBits is rewritten to compute the source's
`scales · codes + mins` (quantize/gguf_blocks.py: BlockWeight). In fp32 (accuracy level 1), exactly:

    y = MatMulNBits(x; codes, scales)               scales · (codes − midpoint), onnxruntime's own kernels
      + BlockSum(x) @ (mins + midpoint · scales)ᵀ   the blocks' offsets, only where some are non-zero

MatMulNBits' floating-point zero points could hold the mins, but onnxruntime's CPU kernel then dequantizes the
whole weight on every call (measured 10× slower; refused at 8 bits). Codes wider than 4 bits run as two 4-bit
halves (`16 · high + low`) over the input twice: onnxruntime's 8-bit kernel has no fp32 path of its own, its
fallback measured ~100× slower.

With int8 activations (accuracy level 4, llama.cpp's own arithmetic) the offsets path's four nodes a linear cost
more than its matmul (benchmarks/decode_profile.py), so a decoder linear carries its mins inside one MatMulNBits:
integer zero points take the nearest whole number of steps, and the remainder (at most half a step) rides on extra
input blocks holding the input's block sums, whose weights are the remainder in base-2^bits digits to 8 bits, the
precision the int8 activations have anyway:

    y = MatMulNBits([x | BlockSum(x) | BlockSum(x)]; [codes | digits], [scales | units], zero points)

The block sums are computed once per input and shared by the linears that read it (q/k/v, gate and up); codes wider
than 4 bits run as 8-bit codes. Scales, mins and codes are stored at the width the source holds them and put
together when the session opens (quantize/folded_tensors.py), so the file holds about what the source's blocks do.

A tied token embedding reads the LM head's codes through the builder's GatherBlockQuantized, offsets gathered too;
an untied one gathers its own blocks the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from phiexport.errors import BuildError
from phiexport.quantize.folded_tensors import FoldedTensors
from phiexport.quantize.gguf_blocks import BlockWeight
from phiexport.quantize.onnx_weights import builder_sources, pack_nibbles, save_with_external_data
from phiexport.quantize.source_integers import EMBEDDING, INT8_ACTIVATIONS, LM_HEAD

REMAINDER_BITS = 8  # precision of the mins' remainder beyond the zero points, in digits of the codes' width
COMPACT_BITS = (5, 6)  # code widths stored at their own width (Q5_0, Q5_1, Q5_K, Q6_K)
UNTIED_TABLE = f"{EMBEDDING}.weight_Q4"  # the builder's int4 table of an untied token embedding
FLOAT_TABLE = f"{EMBEDDING}.weight"  # the builder's float one (int8 packages, DirectML)


def import_weights(model_path: Path, weights: dict[str, BlockWeight], *, accuracy_level: int) -> set[str]:
    """Rewrite the builder's MatMulNBits nodes of `model_path` (in place) that `weights` (by Hugging Face module
    name, `lm_head` the LM head even when tied) covers; the names of the weights imported. Nodes without a source
    weight keep the builder's re-quantized integers."""
    import onnx

    model = onnx.load(str(model_path))
    graph = model.graph
    rows = {name: weight.codes.shape[0] for name, weight in weights.items()}
    producer = {output: node for node in graph.node for output in node.output}
    rewrites: dict[int, _Rewrite] = {}
    block_sums: dict[str, str] = {}  # input → the input with its block sums appended, shared by its readers
    head: _Written | None = None
    builder_head = ""  # the builder's own table of the LM head, which nothing may read once the head is imported
    imported: set[str] = set()
    for index, node in enumerate(graph.node):
        if node.op_type != "MatMulNBits":
            continue
        attrs = {attribute.name: attribute.i for attribute in node.attribute}
        sources = [(LM_HEAD, slice(None))] if node.name.startswith("/lm_head/") else None
        if sources is None:
            sources = builder_sources(node.name, attrs["N"], rows)
        if sources is None or any(name not in weights for name, _ in sources):
            continue
        parts = [weights[name].take_rows(part) for name, part in sources]
        if sum(part.codes.shape[0] for part in parts) != attrs["N"] or parts[0].codes.shape[1] != attrs["K"]:
            raise BuildError(f"{node.name}: the source weights do not have the builder's shape", "report a bug")
        is_head = node.name.startswith("/lm_head/")  # the tied embedding gathers its codes: no extra blocks
        rewrite = _Rewrite(accuracy_level, None if is_head else block_sums, finer_input_blocks=is_head)
        written = rewrite.linear(node.input[0], parts, node.output[0], node.name)
        rewrites[index] = rewrite
        imported.update(name for name, _ in sources)
        if is_head:
            head, builder_head = written, node.input[1]
    for index, node in enumerate(graph.node):
        if node.op_type != "GatherBlockQuantized":
            continue
        if head is not None and _reads_lm_head(node, producer, graph):
            rewrite = _Rewrite(accuracy_level)
            rewrite.embedding(node, head)
            rewrites[index] = rewrite
        elif EMBEDDING in weights and node.input[0] == UNTIED_TABLE:
            rewrite = _Rewrite(accuracy_level)
            rewrite.embedding(node, rewrite.table(weights[EMBEDDING], f"{node.name}/table"))
            rewrites[index] = rewrite
            imported.add(EMBEDDING)
    if not rewrites:
        return imported
    nodes = []
    for index, node in enumerate(graph.node):
        if index in rewrites:
            graph.initializer.extend(rewrites[index].initializers)
            nodes.extend(rewrites[index].nodes)
        else:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    _drop_unused(graph)
    if head is not None and any(builder_head in node.input for node in graph.node):
        raise BuildError(
            "the tied embedding still gathers the builder's re-quantized LM head, not the imported one",
            "report a bug (the builder's tied-embedding graph changed)",
        )
    save_with_external_data(model, model_path)
    return imported


@dataclass
class _Written:
    """A rewritten linear's tensors, which a tied embedding gathers from."""

    codes: str  # uint8 [N, blocks, block_size · bits / 8]
    scales: str  # float32 [N, blocks]
    zero_points: str | None  # uint8, packed like the codes
    offsets: str | None  # float32 [N, source blocks], added after the codes' dequantization
    bits: int
    block_size: int
    halves: bool  # codes are [high | low] over a doubled K
    width: int  # K of the source weight


@dataclass
class _Rewrite(FoldedTensors):
    """The nodes and initializers replacing one node of the builder's graph."""

    accuracy_level: int
    block_sums: dict[str, str] | None = None  # set where the mins may ride on extra input blocks (see module doc)
    finer_input_blocks: bool = False  # int8 activations: quantize the input in half blocks (see _matmul)

    def linear(self, x: str, parts: list[BlockWeight], output: str, name: str) -> _Written | None:
        """`output = x · Wᵀ` for W the parts' rows stacked; one MatMulNBits when they share a layout."""
        stacked = BlockWeight.stack(parts)
        if stacked is not None:
            return self._matmul(x, stacked, output, name)
        outputs = [f"{name}/part{i}" for i in range(len(parts))]
        for part, part_output in zip(parts, outputs, strict=True):
            self._matmul(x, part, part_output, part_output)
        self._node("Concat", outputs, output, f"{name}/Concat", axis=-1)
        return None

    def embedding(self, gather: Any, head: _Written) -> None:
        """The tied embedding: the builder's GatherBlockQuantized, pointed at the imported LM head."""
        name = gather.name
        row_bytes = head.width * (2 if head.halves else 1) * head.bits // 8
        rows = self._constant(f"{name}/data_shape", np.array([-1, row_bytes]))
        data = self._node("Reshape", [head.codes, rows], f"{name}/data", f"{name}/Reshape")
        out = gather.output[0]
        gathered = f"{name}/output" if head.halves or head.offsets else out
        self._node(
            "GatherBlockQuantized",
            [data, gather.input[1], head.scales, *([head.zero_points] if head.zero_points else [])],
            gathered,
            name,
            domain="com.microsoft",
            bits=head.bits,
            block_size=head.block_size,
            gather_axis=0,
            quantize_axis=1,
        )
        if head.halves:  # [high | low] halves of each row, summed
            shape = self._constant(f"{name}/halves_shape", np.array([0, 0, 2, head.width]))
            halves = self._node("Reshape", [gathered, shape], f"{name}/halves", f"{name}/ReshapeHalves")
            axis = self._constant(f"{name}/halves_axis", np.array([-2]))
            summed = f"{name}/summed" if head.offsets else out
            gathered = self._node("ReduceSum", [halves, axis], summed, f"{name}/SumHalves", keepdims=0)
        if head.offsets:
            blocks = head.width // head.block_size
            expand = np.repeat(np.eye(blocks, dtype=np.float32), head.block_size, axis=1)  # [blocks, K] of 0 and 1
            offsets = self._node("Gather", [head.offsets, gather.input[1]], f"{name}/offsets", f"{name}/GatherOffsets")
            spread = self._node(
                "MatMul", [offsets, self._constant(f"{name}/expand", expand)], f"{name}/row_offsets", f"{name}/Spread"
            )
            self._node("Add", [gathered, spread], out, f"{name}/AddOffsets")

    def table(self, weight: BlockWeight, name: str) -> _Written:
        """An untied token embedding's own blocks, for `embedding` to gather: codes at 4 bits or, wider, at 8 (a
        gather reads each row once, so never in halves)."""
        rows, width = weight.codes.shape
        bits = 4 if weight.bits <= 4 else 8
        scales = self._float(f"{name}/scales", weight.scales, weight.scale_steps)
        if weight.bits in COMPACT_BITS:
            codes = self._compact_codes(f"{name}/codes", weight, halves=False)
        else:
            values = weight.codes if bits == 8 else pack_nibbles(weight.codes)
            codes = self._initializer(f"{name}/codes", values.reshape(rows, -1, weight.block_size * bits // 8))
        offsets = self._offsets(weight, scales, 1 << (bits - 1), name)
        return _Written(codes, scales, None, offsets, bits, weight.block_size, False, width)

    def _matmul(self, x: str, weight: BlockWeight, output: str, name: str) -> _Written:
        rows, width = weight.codes.shape
        block = weight.block_size
        halves = weight.bits > 4 and self.accuracy_level != INT8_ACTIVATIONS
        scales = self._float(f"{name}/scales", weight.scales, weight.scale_steps)
        if halves:
            # 5- to 7-bit codes: the high half is lifted by 8, so that MatMulNBits' midpoint takes back only that
            # and the offsets stay small (less cancellation in fp32)
            lift = 8 if weight.bits <= 7 else 0
            codes = np.concatenate([(weight.codes >> 4) + lift, weight.codes & 0x0F], axis=1)
            bits, midpoint = 4, 16 * (8 - lift) + 8
            sixteen = self._constant(f"{name}/sixteen", np.array(16.0, np.float32))
            high = self._node("Mul", [scales, sixteen], f"{name}/high_scales", f"{name}/HighScales")
            scales_in = self._node("Concat", [high, scales], f"{name}/halves_scales", f"{name}/ConcatScales", axis=1)
            x_in = self._node("Concat", [x, x], f"{name}/input_twice", f"{name}/ConcatInput", axis=-1)
        else:
            codes, bits, scales_in, x_in = weight.codes, (4 if weight.bits <= 4 else 8), scales, x
            midpoint = 1 << (bits - 1)
        zero_points = _integer_zero_points(weight)
        carried = self.block_sums is not None and self.accuracy_level == INT8_ACTIVATIONS
        if carried and zero_points is None and np.any(weight.mins + midpoint * weight.scales):
            return self._remainder_blocks(x, weight, codes, bits, scales, output, name)
        if self._halve_blocks(weight, block, midpoint, zero_points):
            # the LM head's input quantized to int8 in blocks of 16, not 32, each with its own scale: the logits
            # come straight out of it (KL 0.00279 → 0.00260 on SmolLM2, decode speed unchanged; BENCHMARKS.md);
            # the same scale twice is the same weight, and the file keeps one of each pair
            block //= 2
            scales_in = self._repeated(scales, 2, name)
        if weight.bits in COMPACT_BITS:
            codes_name = self._compact_codes(f"{name}/codes", weight, halves=halves)
        else:
            codes_name = self._initializer(f"{name}/codes", self._blocks(codes, bits, block))
        inputs = [x_in, codes_name, scales_in]
        offsets = None
        if zero_points is None:
            offsets = self._offsets(weight, scales, midpoint, name)
        else:  # GPTQ/AWQ: integer zero points, MatMulNBits' own (split like the codes when in halves)
            if halves:
                zero_points = np.concatenate([(zero_points >> 4) + lift, zero_points & 0x0F], axis=1)
            inputs.append(self._zero_points(f"{name}/zero_points", zero_points, bits))
        product = output if offsets is None else f"{name}/product"
        self._node(
            "MatMulNBits",
            inputs,
            product,
            name,
            domain="com.microsoft",
            K=codes.shape[1],
            N=rows,
            bits=bits,
            block_size=block,
            accuracy_level=self.accuracy_level,
        )
        if offsets is not None:
            by_block = self._constant(f"{name}/block_shape", np.array([0, 0, width // block, block]))
            blocked = self._node("Reshape", [x, by_block], f"{name}/input_blocks", f"{name}/ReshapeBlocks")
            axis = self._constant(f"{name}/block_axis", np.array([-1]))
            sums = self._node("ReduceSum", [blocked, axis], f"{name}/block_sums", f"{name}/BlockSums", keepdims=0)
            transposed = self._node("Transpose", [offsets], f"{name}/offsets_t", f"{name}/Transpose", perm=[1, 0])
            added = self._node("MatMul", [sums, transposed], f"{name}/block_offsets", f"{name}/MatMulOffsets")
            self._node("Add", [product, added], output, f"{name}/AddOffsets")
        zero_name = inputs[3] if len(inputs) > 3 else None
        return _Written(codes_name, scales_in, zero_name, offsets, bits, block, halves, width)

    def _remainder_blocks(
        self, x: str, weight: BlockWeight, codes: np.ndarray, bits: int, scales: str, output: str, name: str
    ) -> _Written:
        """One MatMulNBits for blocks with mins (see the module doc): zero points, then the remainder as digits
        over copies of the input's block sums. Exact to 2⁻⁸ of each row's largest remainder, itself at most half a
        step: far inside the int8 activations' own rounding (benchmarks/decode_peers.py measures the KL)."""
        rows, width = codes.shape
        block, levels = weight.block_size, 1 << bits
        stepped = weight.scales != 0  # a block of zero scale adds its min whatever its zero point: any will do
        steps = np.rint(-weight.mins[stepped] / weight.scales[stepped])
        zeros = np.full(weight.scales.shape, np.median(steps) if steps.size else levels // 2)
        zeros[stepped] = steps
        zeros = np.clip(zeros, 0, levels - 1).astype(np.uint8)
        remainder = weight.mins.astype(np.float64) + zeros * weight.scales.astype(np.float64)
        count = -(-REMAINDER_BITS // bits) if remainder.any() else 0  # mins on whole steps: zero points alone
        digits, units = _digits(remainder, bits, count)
        blocks = width // block
        slots = -(-blocks // block) * block  # each copy of the sums, padded to whole blocks
        extra = len(digits) * slots // block
        digit_codes = np.full((rows, len(digits), slots), levels // 2, np.uint8)
        if digits:
            digit_codes[:, :, :blocks] = np.stack(digits, axis=1) + levels // 2
        digit_codes = digit_codes.reshape(rows, -1)
        if weight.bits in COMPACT_BITS:  # put together when the session opens
            codes_name = self._compact_codes(f"{name}/codes", weight, halves=False)
            if digits:
                digits_name = self._initializer(f"{name}/remainder_digits", self._blocks(digit_codes, bits, block))
                codes_name = self._node(
                    "Concat", [codes_name, digits_name], f"{name}/all_codes", f"{name}/ConcatDigits", axis=1
                )
        else:  # one tensor in the file, which onnxruntime prepacks as it is
            all_codes = np.concatenate([codes, digit_codes], axis=1)
            codes_name = self._initializer(f"{name}/codes", self._blocks(all_codes, bits, block))
        scales_in, x_in = scales, x
        if digits:
            unit_scales = np.repeat(units[:, None] * float(levels) ** np.arange(len(digits)), slots // block, axis=1)
            units_name = self._initializer(f"{name}/remainder_units", unit_scales.astype(np.float32))
            scales_in = self._node("Concat", [scales, units_name], f"{name}/all_scales", f"{name}/ConcatUnits", axis=1)
            x_in = self._with_block_sums(x, width, block, len(digits), slots)
        all_zeros = np.concatenate([zeros, np.full((rows, extra), levels // 2, np.uint8)], axis=1)
        zeros_name = self._zero_points(f"{name}/zero_points", all_zeros, bits)
        self._node(
            "MatMulNBits",
            [x_in, codes_name, scales_in, zeros_name],
            output,
            name,
            domain="com.microsoft",
            K=width + extra * block,
            N=rows,
            bits=bits,
            block_size=block,
            accuracy_level=self.accuracy_level,
        )
        return _Written(codes_name, scales_in, zeros_name, None, bits, block, False, width)

    def _halve_blocks(self, weight: BlockWeight, block: int, midpoint: int, zero_points: np.ndarray | None) -> bool:
        """True for a symmetric 4- or 8-bit LM head at int8 activations whose blocks halve to MatMulNBits' least."""
        if not self.finer_input_blocks or self.accuracy_level != INT8_ACTIVATIONS or weight.bits not in (4, 8):
            return False
        return block >= 32 and zero_points is None and not np.any(weight.mins + midpoint * weight.scales)

    def _with_block_sums(self, x: str, width: int, block: int, copies: int, slots: int) -> str:
        """`[x | sums | sums …]`: x with `copies` of its block sums, each padded to `slots`; made once per input."""
        assert self.block_sums is not None  # only called where the caller gave it
        if x in self.block_sums:
            return self.block_sums[x]
        blocks = width // block
        shape = self._constant(f"{x}/block_shape", np.array([0, 0, blocks, block]))
        grouped = self._node("Reshape", [x, shape], f"{x}/blocks", f"{x}/ReshapeBlocks")
        axis = self._constant(f"{x}/block_axis", np.array([-1]))
        sums = self._node("ReduceSum", [grouped, axis], f"{x}/block_sums", f"{x}/BlockSums", keepdims=0)
        if slots > blocks:
            pads = self._constant(f"{x}/sums_pads", np.array([0, 0, 0, 0, 0, slots - blocks]))
            sums = self._node("Pad", [sums, pads], f"{x}/padded_sums", f"{x}/PadSums")
        joined = self._node("Concat", [x] + [sums] * copies, f"{x}/with_sums", f"{x}/AppendSums", axis=-1)
        self.block_sums[x] = joined
        return joined

    def _offsets(self, weight: BlockWeight, scales: str, midpoint: int, name: str) -> str | None:
        """float32 `[N, blocks]` `mins + midpoint · scales`: what the blocks add beyond MatMulNBits' dequantization;
        None when that is zero. Mins that are one multiple of the scales (symmetric formats) are not stored."""
        if not np.any(weight.mins + midpoint * weight.scales):
            return None
        nonzero = np.flatnonzero(weight.scales)
        ratio = float(weight.mins.flat[nonzero[0]] / weight.scales.flat[nonzero[0]]) if nonzero.size else 0.0
        if np.array_equal(weight.mins, np.float32(ratio) * weight.scales):
            factor = self._constant(f"{name}/offset_ratio", np.array(ratio + midpoint, np.float32))
            return self._node("Mul", [scales, factor], f"{name}/offsets", f"{name}/Offsets")
        mins = self._float(f"{name}/mins", weight.mins, weight.min_steps)
        mid = self._constant(f"{name}/midpoint", np.array(float(midpoint), np.float32))
        spread = self._node("Mul", [scales, mid], f"{name}/midpoint_scales", f"{name}/MidpointScales")
        return self._node("Add", [mins, spread], f"{name}/offsets", f"{name}/Offsets")


def _digits(values: np.ndarray, bits: int, count: int) -> tuple[list[np.ndarray], np.ndarray]:
    """`values` `[rows, blocks]` as `count` balanced base-2^bits digits (each in [−2^(bits−1), 2^(bits−1))) of a
    unit per row: `values ≈ units · Σ_j digits[j] · 2^(bits·j)`, to half a unit."""
    if count == 0:
        return [], np.ones(values.shape[0])
    half, base = 1 << (bits - 1), 1 << bits
    top = (half - 1) * (base**count - 1) // (base - 1)  # the largest magnitude the digits reach, in units
    units = np.abs(values).max(axis=1) / top
    units[units == 0] = 1.0
    rest = np.rint(values / units[:, None]).astype(np.int64)
    digits = []
    for _ in range(count):
        digit = (rest + half) % base - half
        digits.append(digit)
        rest = (rest - digit) // base
    assert not rest.any()
    return digits, units


def _integer_zero_points(weight: BlockWeight) -> np.ndarray | None:
    """uint8 `[N, blocks]` zero points `z` with `mins = −z · scales` exactly, when they differ between blocks
    (GPTQ, AWQ); None when the mins are no such integers (Q4_1, K-quants) or one multiple of the scales throughout
    (symmetric formats), which offsets express without a zero-point input."""
    with np.errstate(divide="ignore", invalid="ignore"):
        zeros = np.where(weight.scales != 0, -weight.mins / weight.scales, 1 << (weight.bits - 1))
    if np.all(zeros == zeros.flat[0]) or np.any(zeros != np.rint(zeros)):
        return None
    if zeros.min() < 0 or zeros.max() >= 1 << weight.bits:
        return None
    integers = zeros.astype(np.uint8)
    if not np.array_equal(-integers.astype(np.float32) * weight.scales, weight.mins):
        return None
    return integers


def _reads_lm_head(gather: Any, producer: dict[str, Any], graph: Any) -> bool:
    """True when the GatherBlockQuantized table is the LM head's weight (the builder's tied embedding)."""
    reshape = producer.get(gather.input[0])
    lm_head = next((n for n in graph.node if n.op_type == "MatMulNBits" and n.name.startswith("/lm_head/")), None)
    return reshape is not None and lm_head is not None and reshape.input[0] == lm_head.input[1]


def _drop_unused(graph: Any) -> None:
    """Remove what only the replaced nodes read: nodes whose outputs nothing reads (the tied embedding's old
    Reshape, shape Constants) and initializers no node reads."""
    outputs = {output.name for output in graph.output}
    while True:
        used = {name for node in graph.node for name in node.input} | outputs
        dead = [node for node in graph.node if not any(output in used for output in node.output)]
        for node in dead:
            graph.node.remove(node)
        if not dead:
            break
    kept = [tensor for tensor in graph.initializer if tensor.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
