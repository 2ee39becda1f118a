"""A graph shaped like the genai builder's, for tests that rewrite its MatMulNBits nodes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

COLS = 512  # inputs of every linear: two K-quant super-blocks per row
UNTIED_TABLE = "model.embed_tokens.weight_Q4"  # onnxruntime's quantizer's name for an untied embedding's table
DOWN = "/model/layers.0/mlp/down_proj/MatMul_Q4"  # a builder node name: one HF linear
QKV = "/model/layers.0/attn/qkv_proj/MatMul_Q4"  # the builder's fused q, k, v


def builder_graph(
    path: Path, linears: dict[str, int], vocab: int | None = None, untied: int | None = None, pruned: bool = False
) -> Path:
    """A graph shaped like the genai builder's: MatMulNBits nodes (placeholder int4 weights) named like its
    linears, each from input `x` [1, T, COLS] to an output named after it; with `vocab`, an LM head and the tied
    embedding the builder gathers from the LM head's weight; with `untied`, an embedding of that many rows with its
    own int4 table, as onnxruntime's quantizer writes an untied one; `pruned`: the LM head reads the last position
    only, through the builder's `prune_lm_head` Gather and Unsqueeze."""
    nodes, initializers, outputs = [], [], []
    if untied is not None:
        table = helper.make_tensor(UNTIED_TABLE, TensorProto.INT4, [untied, COLS], bytes(untied * COLS // 2), True)
        scales = numpy_helper.from_array(np.ones((untied, COLS // 32), np.float32), "model.embed_tokens.weight_scales")
        initializers += [table, scales]
        nodes.append(
            helper.make_node(
                "GatherBlockQuantized",
                [UNTIED_TABLE, "input_ids", scales.name],
                ["embedding"],
                "/model/embed_tokens/Gather_Q4",
                domain="com.microsoft",
                block_size=32,
                gather_axis=0,
                quantize_axis=1,
            )
        )
        outputs.append(helper.make_tensor_value_info("embedding", TensorProto.FLOAT, None))
    if vocab is not None:
        linears = {**linears, "/lm_head/MatMul_Q4": vocab}
    for name, rows in linears.items():
        packed, scales = f"{name}.B", f"{name}.scales"
        initializers += [
            numpy_helper.from_array(np.zeros((rows, COLS // 32, 16), np.uint8), packed),
            numpy_helper.from_array(np.ones((rows, COLS // 32), np.float32), scales),
        ]
        attrs = {"K": COLS, "N": rows, "bits": 4, "block_size": 32, "accuracy_level": 4}
        x = "x"
        if pruned and name.startswith("/lm_head/"):
            initializers.append(numpy_helper.from_array(np.array(-1, np.int64), "last"))
            initializers.append(numpy_helper.from_array(np.array([1], np.int64), "axis1"))
            nodes.append(helper.make_node("Gather", ["x", "last"], ["x_last"], "/lm_head/prune/Gather", axis=1))
            nodes.append(helper.make_node("Unsqueeze", ["x_last", "axis1"], ["x_pruned"], "/lm_head/prune/Unsqueeze"))
            x = "x_pruned"
        nodes.append(helper.make_node("MatMulNBits", [x, packed, scales], [name], name, "", "com.microsoft", **attrs))
        outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    if vocab is not None:
        shape = helper.make_node(
            "Constant", [], ["table_shape"], value=numpy_helper.from_array(np.array([vocab, COLS // 2]))
        )
        reshape = helper.make_node("Reshape", ["/lm_head/MatMul_Q4.B", "table_shape"], ["table"], "/embed/Reshape")
        gather = helper.make_node(
            "GatherBlockQuantized",
            ["table", "input_ids", "/lm_head/MatMul_Q4.scales"],
            ["embedding"],
            "/model/embed_tokens/GatherBlockQuantized",
            domain="com.microsoft",
            bits=4,
            block_size=32,
            gather_axis=0,
            quantize_axis=1,
        )
        nodes += [shape, reshape, gather]
        outputs.append(helper.make_tensor_value_info("embedding", TensorProto.FLOAT, None))
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, None, COLS])]
    if vocab is not None or untied is not None:
        inputs.append(helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, None]))
    graph = helper.make_graph(nodes, "builder", inputs, outputs, initializers)
    opsets = [helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    onnx.save(model, str(path), save_as_external_data=True, location=f"{path.name}.data")
    return path


def run(path: Path, **feeds: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    wanted = [output.name for output in session.get_outputs()]
    fed = {spec.name: feeds[spec.name] for spec in session.get_inputs()}
    return dict(zip(wanted, session.run(wanted, fed), strict=True))
