"""The NPU package's CPU-side graphs, written and quantized a block of vocabulary rows at a time.

embeddings.onnx  input_ids [1,S] int64 → hidden [1,S,d] (GatherBlockQuantized, int4 block 32); past_seq_len,
                 total_seq_len → the step's cos, sin [1,1,S,R] (float rotary tables gathered by position:
                 quantizing them would shift every rotation), mask, write and keep (static_graphs.py)
lm_head.onnx     hidden_out [1,S,d] → logits [1,S,V] (final RMSNorm, then MatMulNBits at 4 or 8 bits, block 32)

The weights are onnxruntime's own quantization (its Gather and MatMulNBits quantizers' kernels, applied to row
blocks: both quantize each row on its own, so the bytes are those of the whole matrix). Written here rather than
exported through torch and quantized afterwards because that path held the fp32 vocabulary three times over:
6 GB at Phi-4-mini's 200064 × 3072, against one 200 MB block here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from phiexport.export.static_graphs import MASKED, StaticLayout

BLOCK = 32
ROWS_PER_CHUNK = 16384  # vocabulary rows quantized at once: 200 MB of fp32 at Phi-4-mini's width
GRAPH_FILES = {"embeddings": "embeddings.onnx", "lm_head": "lm_head.onnx"}


def write_vocab_graphs(
    source: Any, layout: StaticLayout, cos: Any, sin: Any, output: Path, *, lm_head_bits: int
) -> dict[str, Path]:
    """embeddings.onnx and lm_head.onnx (external data beside each) from `source` (a LayeredModel); `cos` and
    `sin` are the rotary tables `[context, R]`."""
    output.mkdir(parents=True, exist_ok=True)
    paths = {name: output / file for name, file in GRAPH_FILES.items()}
    _write_embeddings(source, layout, np.asarray(cos), np.asarray(sin), paths["embeddings"])
    _write_lm_head(source, layout, paths["lm_head"], bits=lm_head_bits)
    return paths


def _write_embeddings(source: Any, layout: StaticLayout, cos: np.ndarray, sin: np.ndarray, path: Path) -> None:
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantizer

    data = _ExternalData(path)
    packed, scales = [], []
    for start in range(0, layout.vocab, ROWS_PER_CHUNK):
        rows = source.embedding_rows(slice(start, min(start + ROWS_PER_CHUNK, layout.vocab))).numpy()
        codes, block_scales, _ = DefaultWeightOnlyQuantizer.quantize_ndarray(rows, 1, BLOCK, True)
        packed.append(data.append(codes))
        scales.append(block_scales)
    initializers = [
        data.tensor("embed_tokens.weight_Q4", TensorProto.INT4, [layout.vocab, layout.hidden], packed),
        data.array("embed_tokens.weight_scales", np.concatenate(scales)),
        numpy_helper.from_array(cos.astype(np.float32), "cos_table"),
        numpy_helper.from_array(sin.astype(np.float32), "sin_table"),
    ]
    nodes = [
        helper.make_node(
            "GatherBlockQuantized",
            ["embed_tokens.weight_Q4", "token_rows", "embed_tokens.weight_scales"],
            ["hidden"],
            name="/embed_tokens/Gather_Q4",
            domain="com.microsoft",
            gather_axis=0,
            quantize_axis=1,
            block_size=BLOCK,
        ),
    ]
    step_nodes, step_constants = _step_nodes(layout)
    nodes = step_nodes + nodes  # the clamped token ids first
    initializers += step_constants
    steps = ["1", "steps"]
    graph = helper.make_graph(
        nodes,
        "embeddings",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, steps),
            helper.make_tensor_value_info("past_seq_len", TensorProto.INT32, [1, 1]),
            helper.make_tensor_value_info("total_seq_len", TensorProto.INT32, [1]),
        ],
        [
            helper.make_tensor_value_info("hidden", TensorProto.FLOAT, [*steps, layout.hidden]),
            helper.make_tensor_value_info("cos", TensorProto.FLOAT, ["1", "1", "steps", layout.rotary_dim]),
            helper.make_tensor_value_info("sin", TensorProto.FLOAT, ["1", "1", "steps", layout.rotary_dim]),
            helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["1", "1", "steps", layout.context]),
            helper.make_tensor_value_info("write", TensorProto.FLOAT, ["1", "1", layout.context, "steps"]),
            helper.make_tensor_value_info("keep", TensorProto.FLOAT, ["1", "1", layout.context, "1"]),
        ],
        initializers,
    )
    data.save_model(graph)


def _step_nodes(layout: StaticLayout) -> tuple[list[Any], list[Any]]:
    """The nodes that turn og's `past_seq_len` and `total_seq_len` into a step's cos, sin, mask, write and keep
    (static_graphs.step_tensors is the same in numpy), and their constants."""
    from onnx import helper, numpy_helper

    def const(name: str, value: Any, dtype: Any) -> Any:
        return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)

    constants = [
        const("one_i64", [1], np.int64),
        const("last_token", layout.vocab - 1, np.int64),
        const("one_i32", 1, np.int32),
        const("zero_i32", 0, np.int32),
        const("context_i32", [layout.context], np.int32),
        const("slots", np.arange(layout.context), np.int32),
        const("rows_axis", [0], np.int64),
        const("outer_axes", [0, 1], np.int64),
        const("visible_value", 0.0, np.float32),
        const("masked_value", MASKED, np.float32),
        const("one_f32", 1.0, np.float32),
        const("flat", [1], np.int64),
        const("keep_shape", [1, 1, layout.context, 1], np.int64),
    ]

    def node(op: str, inputs: list[str], output: str, **attributes: Any) -> Any:
        return helper.make_node(op, inputs, [output], name=f"/steps/{output}", **attributes)

    nodes = [
        # og's pad id is the first past the vocabulary (genai_pipeline.py); its rows are discarded
        node("Min", ["input_ids", "last_token"], "token_rows"),
        # positions = past_seq_len + 1 − S + [0 … S−1]
        node("Shape", ["input_ids"], "ids_shape"),
        node("Gather", ["ids_shape", "one_i64"], "steps_i64", axis=0),
        node("Cast", ["steps_i64"], "steps_1", to=6),  # int32
        node("Squeeze", ["steps_1"], "steps"),
        node("Range", ["zero_i32", "steps", "one_i32"], "offsets"),
        node("Reshape", ["past_seq_len", "flat"], "past_flat"),
        node("Add", ["past_flat", "one_i32"], "after_step"),
        node("Sub", ["after_step", "steps_1"], "start"),
        node("Add", ["start", "offsets"], "positions"),
        # table rows: positions clamped into [0, min(C, total_seq_len) − 1]
        node("Min", ["total_seq_len", "context_i32"], "limit"),
        node("Sub", ["limit", "one_i32"], "last_row"),
        node("Max", ["positions", "zero_i32"], "from_zero"),
        node("Min", ["from_zero", "last_row"], "rows"),
        node("Gather", ["cos_table", "rows"], "cos_rows", axis=0),
        node("Unsqueeze", ["cos_rows", "outer_axes"], "cos"),
        node("Gather", ["sin_table", "rows"], "sin_rows", axis=0),
        node("Unsqueeze", ["sin_rows", "outer_axes"], "sin"),
        # slot j is visible to a row at position p when j ≤ p, and written by it when j = p
        node("Unsqueeze", ["positions", "one_i64"], "position_column"),
        node("LessOrEqual", ["slots", "position_column"], "visible"),
        node("Where", ["visible", "visible_value", "masked_value"], "mask_rows"),
        node("Unsqueeze", ["mask_rows", "outer_axes"], "mask"),
        node("Equal", ["position_column", "slots"], "written"),
        node("Cast", ["written"], "written_f32", to=1),  # float
        node("Transpose", ["written_f32"], "write_rows", perm=[1, 0]),
        node("Unsqueeze", ["write_rows", "outer_axes"], "write"),
        node("ReduceMax", ["written_f32", "rows_axis"], "taken", keepdims=0),
        node("Sub", ["one_f32", "taken"], "kept"),
        node("Reshape", ["kept", "keep_shape"], "keep"),
    ]
    return nodes, constants


def _write_lm_head(source: Any, layout: StaticLayout, path: Path, *, bits: int) -> None:
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        DefaultWeightOnlyQuantizer,
    )

    kernel = DefaultWeightOnlyQuantizer(DefaultWeightOnlyQuantConfig(block_size=BLOCK, is_symmetric=True, bits=bits))
    data = _ExternalData(path)
    packed, scales = [], []
    for start in range(0, layout.vocab, ROWS_PER_CHUNK):
        rows = source.lm_head_rows(start, min(start + ROWS_PER_CHUNK, layout.vocab)).numpy()
        codes, block_scales, _ = kernel.qbits_block_quant(np.ascontiguousarray(rows.T))
        packed.append(data.append(codes))
        scales.append(block_scales)
    blocks = -(-layout.hidden // BLOCK)
    norm = source.norm
    initializers = [
        numpy_helper.from_array(norm.weight.detach().numpy().astype(np.float32), "norm.weight"),
        data.tensor("lm_head.weight_Q", TensorProto.UINT8, [layout.vocab, blocks, BLOCK * bits // 8], packed),
        data.array("lm_head.weight_scales", np.concatenate(scales)),
    ]
    eps = getattr(norm, "variance_epsilon", None) or norm.eps
    nodes = [
        helper.make_node(
            "SimplifiedLayerNormalization",
            ["hidden_out", "norm.weight"],
            ["normed"],
            name="/norm",
            axis=-1,
            epsilon=eps,
        ),
        helper.make_node(
            "MatMulNBits",
            ["normed", "lm_head.weight_Q", "lm_head.weight_scales"],
            ["logits"],
            name="/lm_head/MatMulNBits",
            domain="com.microsoft",
            K=layout.hidden,
            N=layout.vocab,
            bits=bits,
            block_size=BLOCK,
            accuracy_level=4,
        ),
    ]
    graph = helper.make_graph(
        nodes,
        "lm_head",
        [helper.make_tensor_value_info("hidden_out", TensorProto.FLOAT, ["1", "steps", layout.hidden])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["1", "steps", layout.vocab])],
        initializers,
    )
    data.save_model(graph)


class _ExternalData:
    """`<graph>.data` beside a graph, appended to a block at a time; tensors refer to their byte ranges."""

    def __init__(self, graph_path: Path):
        self.graph_path = graph_path
        self.location = f"{graph_path.stem}.data"
        self._file = (graph_path.parent / self.location).open("wb")

    def append(self, array: np.ndarray) -> tuple[int, int]:
        offset = self._file.tell()
        self._file.write(np.ascontiguousarray(array).tobytes())
        return offset, self._file.tell() - offset

    def tensor(self, name: str, data_type: int, dims: list[int], pieces: list[tuple[int, int]]) -> Any:
        """A tensor stored in consecutive appended `pieces`."""
        from onnx import TensorProto

        tensor = TensorProto(name=name, data_type=data_type, dims=dims, data_location=TensorProto.EXTERNAL)
        for key, value in (
            ("location", self.location),
            ("offset", str(pieces[0][0])),
            ("length", str(sum(length for _, length in pieces))),
        ):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        return tensor

    def array(self, name: str, array: np.ndarray) -> Any:
        from onnx import helper

        return self.tensor(name, helper.np_dtype_to_tensor_dtype(array.dtype), list(array.shape), [self.append(array)])

    def save_model(self, graph: Any) -> None:
        import onnx
        from onnx import helper

        self._file.close()
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
        )
        model.ir_version = 10
        onnx.save(model, str(self.graph_path))
