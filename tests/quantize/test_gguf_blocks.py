"""Each GGUF block format, imported into a builder-shaped graph without re-quantization, computes the `gguf`
package's own dequantization in onnxruntime, on random blocks (degenerate ones included), at both compute types."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from gguf import GGMLQuantizationType as Q
from gguf.quants import dequantize
from onnx import numpy_helper

from phiexport.quantize.gguf_blocks import LOSSLESS, gguf_to_blocks, type_size
from phiexport.quantize.imported import import_weights
from tests.builder_graph import COLS, DOWN, QKV, UNTIED_TABLE, builder_graph, run

ROWS = 6
FORMATS = sorted(LOSSLESS, key=lambda q: q.name)


def random_blocks(qtype: Q, rows: int, rng: np.random.Generator) -> np.ndarray:
    """Random code bytes with finite fp16 scale and offset fields, a few blocks' scales zeroed."""
    count = rows * COLS // (256 if qtype.name.endswith("_K") else 32)
    blocks = rng.integers(0, 256, (count, type_size(qtype)), dtype=np.uint8)
    halves = {Q.Q6_K: [type_size(qtype) - 2], Q.Q4_0: [0], Q.Q8_0: [0], Q.Q5_0: [0]}.get(qtype, [0, 2])
    for offset in halves:  # byte offsets of the fp16 fields: scale first, then min/dmin where the format has one
        values = rng.uniform(-0.05, 0.05, count).astype(np.float16)
        values[:2] = 0.0  # a block whose every weight is its offset (or zero)
        blocks[:, offset : offset + 2] = values.view(np.uint8).reshape(count, 2)
    if qtype == Q.Q6_K:
        blocks[0, -18:-2] = 0  # zero sub-block scales
    return blocks.reshape(-1)


@pytest.mark.parametrize("accuracy_level", [1, 4], ids=["fp32", "int8-activations"])
@pytest.mark.parametrize("qtype", FORMATS, ids=lambda q: q.name)
def test_matmul_nbits_computes_ggufs_dequantization(qtype, accuracy_level, tmp_path):
    data = random_blocks(qtype, ROWS, np.random.default_rng(int(qtype)))
    expected = dequantize(data, qtype).reshape(ROWS, COLS)
    weight = gguf_to_blocks(data, qtype, ROWS, COLS)
    assert (weight.bits, weight.block_size) == LOSSLESS[qtype]
    assert np.array_equal(weight.dequantize(), expected)  # codes, scales and mins are the file's
    path = builder_graph(tmp_path / "model.onnx", {DOWN: ROWS})
    assert import_weights(path, {"model.layers.0.mlp.down_proj": weight}, accuracy_level=accuracy_level) == {
        "model.layers.0.mlp.down_proj"
    }
    scale = np.abs(expected).max()
    # the identity is exact in int8 too, so both compute types give each weight back: fp32 to float rounding; int8
    # activations carry mins that fall between whole steps to 8 bits of the row's largest remainder, which is at
    # most the row's largest weight (2 · 119 units of it: 4-bit digits; 2 · 127: 8-bit)
    found = run(path, x=np.eye(COLS, dtype=np.float32)[None])[DOWN][0].T
    rows = np.abs(expected).max(axis=1, keepdims=True)
    bound = 1e-6 * scale if accuracy_level == 1 else 1e-6 * scale + rows / 238
    assert np.all(np.abs(found - expected) <= bound), qtype.name
    if accuracy_level == 1:  # fp32: any input, to float rounding
        x = np.random.default_rng(1).standard_normal((1, 5, COLS)).astype(np.float32)
        product = run(path, x=x)[DOWN]
        assert np.abs(product - x @ expected.T).max() <= 1e-5 * np.abs(x @ expected.T).max(), qtype.name


@pytest.mark.parametrize(
    ("qtype", "accuracy_level", "pruned"),
    [
        (Q.Q8_0, 1, False),
        (Q.Q8_0, 4, False),
        (Q.Q4_1, 1, False),
        (Q.Q6_K, 1, False),
        (Q.Q4_0, 4, False),
        (Q.Q8_0, 4, True),
    ],
    ids=["Q8_0-halves", "Q8_0-8bit", "Q4_1-offsets", "Q6_K-halves", "Q4_0", "Q8_0-pruned-head"],
)
def test_tied_embedding_gathers_the_imported_lm_head_rows(qtype, accuracy_level, pruned, tmp_path):
    """The builder's `prune_lm_head` (the CPU target's) puts a Gather before the LM head: the embedding is still
    found and pointed at the imported rows."""
    vocab = 40
    data = random_blocks(qtype, vocab, np.random.default_rng(3))
    table = dequantize(data, qtype).reshape(vocab, COLS)
    weight = gguf_to_blocks(data, qtype, vocab, COLS)
    path = builder_graph(tmp_path / "model.onnx", {}, vocab=vocab, pruned=pruned)
    assert import_weights(path, {"lm_head": weight}, accuracy_level=accuracy_level) == {"lm_head"}
    ids = np.array([[0, 7, 39, 7]], dtype=np.int64)
    x = np.eye(COLS, dtype=np.float32)[None]
    outputs = run(path, x=x, input_ids=ids)
    scale = np.abs(table).max()
    assert np.abs(outputs["embedding"][0] - table[ids[0]]).max() <= 1e-6 * scale
    if pruned:  # the last position's logits only: the last row of the identity, the table's last column
        assert np.abs(outputs["/lm_head/MatMul_Q4"][0, -1] - table[:, -1]).max() <= 1e-6 * scale
    else:
        assert np.abs(outputs["/lm_head/MatMul_Q4"][0].T - table).max() <= 1e-6 * scale
    names = {tensor.name for tensor in onnx.load(str(path), load_external_data=False).graph.initializer}
    assert "/lm_head/MatMul_Q4.B" not in names  # the builder's re-quantized table is gone, not carried along


@pytest.mark.parametrize("qtype", [Q.Q4_0, Q.Q4_1, Q.Q8_0, Q.Q4_K, Q.Q5_K, Q.Q6_K], ids=lambda q: q.name)
def test_untied_embedding_gathers_its_own_blocks(qtype, tmp_path):
    """An untied token embedding replaces the int4 table the builder quantized with the GGUF's own blocks."""
    vocab = 40
    data = random_blocks(qtype, vocab, np.random.default_rng(5))
    table = dequantize(data, qtype).reshape(vocab, COLS)
    path = builder_graph(tmp_path / "model.onnx", {}, untied=vocab)
    weights = {"model.embed_tokens": gguf_to_blocks(data, qtype, vocab, COLS)}
    assert import_weights(path, weights, accuracy_level=1) == {"model.embed_tokens"}
    ids = np.array([[0, 7, 39, 7, 1]], dtype=np.int64)
    found = run(path, x=np.zeros((1, 1, COLS), np.float32), input_ids=ids)["embedding"][0]
    assert np.abs(found - table[ids[0]]).max() <= 1e-6 * np.abs(table).max()
    names = {tensor.name for tensor in onnx.load(str(path), load_external_data=False).graph.initializer}
    assert UNTIED_TABLE not in names


def test_fused_node_of_mixed_layouts_runs_each_part_and_concatenates(tmp_path):
    """Q4_K_M files mix formats within a layer: q and k Q4_K (blocks of 32), v Q6_K (blocks of 16)."""
    rng = np.random.default_rng(5)
    parts = {"q_proj": (Q.Q4_K, 4), "k_proj": (Q.Q4_K, 2), "v_proj": (Q.Q6_K, 2)}
    weights, expected = {}, []
    for name, (qtype, rows) in parts.items():
        data = random_blocks(qtype, rows, rng)
        weights[f"model.layers.0.self_attn.{name}"] = gguf_to_blocks(data, qtype, rows, COLS)
        expected.append(dequantize(data, qtype).reshape(rows, COLS))
    path = builder_graph(tmp_path / "model.onnx", {QKV: 8})
    assert import_weights(path, weights, accuracy_level=1) == set(weights)
    found = run(path, x=np.eye(COLS, dtype=np.float32)[None])[QKV][0].T
    stacked = np.concatenate(expected)
    assert np.abs(found - stacked).max() <= 1e-6 * np.abs(stacked).max()
    ops = [node.op_type for node in onnx.load(str(path), load_external_data=False).graph.node]
    assert ops.count("MatMulNBits") == 3 and "Concat" in ops


@pytest.mark.parametrize("accuracy_level", [1, 4], ids=["fp32", "int8-activations"])
@pytest.mark.parametrize(
    ("qtype", "bits_per_weight", "stored_bits", "int8_stored_bits"),
    [
        (Q.Q4_1, 5.0, 5.0, 5.27),
        (Q.Q4_0, 4.5, 4.5, 4.5),
        (Q.Q8_0, 8.5, 8.5, 8.5),
        (Q.Q4_K, 4.5, 4.625, 5.08),
        (Q.Q5_0, 5.5, 5.5, 5.5),
        (Q.Q5_1, 6.0, 6.0, 6.33),
        (Q.Q5_K, 5.5, 5.625, 6.14),
        (Q.Q6_K, 6.5625, 6.5625, 6.5625),
    ],
    ids=lambda value: getattr(value, "name", None),
)
def test_file_holds_no_more_than_the_gguf_blocks(
    qtype, bits_per_weight, stored_bits, int8_stored_bits, accuracy_level, tmp_path
):
    """fp16 block headers stay fp16 in the file (a Cast widens them when the session opens); a K-quant's 6-bit
    sub-block scales and mins take a byte each (`stored_bits`), not the four of their fp32 products; 5- and 6-bit
    codes take 5 and 6 bits, not the 8 of two nibbles or an 8-bit code. With int8 activations, mins between whole
    steps become zero points plus the remainder's digit blocks (`int8_stored_bits`, at these 512 inputs a row:
    64 4-bit digits or 32 8-bit ones and their units), in place of the mins' own bits."""
    stored_bits = stored_bits if accuracy_level == 1 else int8_stored_bits
    data = random_blocks(qtype, ROWS, np.random.default_rng(9))
    assert data.size * 8 / (ROWS * COLS) == bits_per_weight
    path = builder_graph(tmp_path / "model.onnx", {DOWN: ROWS})
    weight = gguf_to_blocks(data, qtype, ROWS, COLS)
    import_weights(path, {"model.layers.0.mlp.down_proj": weight}, accuracy_level=accuracy_level)
    graph = onnx.load(str(path)).graph
    stored = sum(numpy_helper.to_array(tensor).nbytes for tensor in graph.initializer if len(tensor.dims) >= 2)
    assert stored * 8 / (ROWS * COLS) <= stored_bits + 0.005
    options = ort.SessionOptions()  # what the session computes from them: constants, folded when it opens
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(tmp_path / "opened.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    opened = onnx.load(str(tmp_path / "opened.onnx")).graph
    constants = {tensor.name for tensor in opened.initializer}
    matmuls = [node for node in opened.node if node.op_type == "MatMulNBits"]
    assert matmuls and all(set(node.input[1:3]) <= constants for node in matmuls)  # codes and scales, as the file's
    assert not {node.op_type for node in opened.node} & {"BitShift", "BitwiseAnd", "BitwiseOr"}


def test_nodes_without_a_source_weight_keep_the_builders_integers(tmp_path):
    path = builder_graph(tmp_path / "model.onnx", {DOWN: ROWS, QKV: 8})
    data = random_blocks(Q.Q4_0, ROWS, np.random.default_rng(2))
    weights = {"model.layers.0.mlp.down_proj": gguf_to_blocks(data, Q.Q4_0, ROWS, COLS)}
    assert import_weights(path, weights, accuracy_level=1) == set(weights)
    graph = onnx.load(str(path)).graph
    assert {tensor.name for tensor in graph.initializer} >= {f"{QKV}.B", f"{QKV}.scales"}
    assert f"{DOWN}.B" not in {tensor.name for tensor in graph.initializer}


def test_int8_activations_carry_the_mins_inside_one_matmul_per_linear(tmp_path):
    """Q4_1 at accuracy level 4: each linear is one MatMulNBits (zero points, and the mins' remainder on digit blocks
    over the input's block sums), the sums made once for both linears that read `x`. On a random input the products
    err from `x · Wᵀ` about as much as `x` rounded to int8 in blocks of 32 (llama.cpp's Q8 activations) does."""
    rng = np.random.default_rng(11)
    parts = {"model.layers.0.self_attn.q_proj": 4, "model.layers.0.self_attn.k_proj": 2}
    parts |= {"model.layers.0.self_attn.v_proj": 2, "model.layers.0.mlp.down_proj": ROWS}
    weights, tables = {}, {}
    for name, rows in parts.items():
        data = random_blocks(Q.Q4_1, rows, rng)
        weights[name] = gguf_to_blocks(data, Q.Q4_1, rows, COLS)
        tables[name] = dequantize(data, Q.Q4_1).reshape(rows, COLS)
    path = builder_graph(tmp_path / "model.onnx", {DOWN: ROWS, QKV: 8})
    assert import_weights(path, weights, accuracy_level=4) == set(weights)
    ops = [node.op_type for node in onnx.load(str(path), load_external_data=False).graph.node]
    assert ops.count("MatMulNBits") == 2 and ops.count("ReduceSum") == 1 and "MatMul" not in ops and "Add" not in ops
    x = rng.standard_normal((1, 5, COLS)).astype(np.float32)
    outputs = run(path, x=x)
    qkv = np.concatenate([tables[f"model.layers.0.self_attn.{p}_proj"] for p in "qkv"])
    blocks = x.reshape(1, 5, -1, 32)
    steps = np.abs(blocks).max(axis=-1, keepdims=True) / 127
    rounded = (np.rint(blocks / steps) * steps).reshape(x.shape)  # int8 activations, as llama.cpp's Q8 blocks
    for node, table in ((QKV, qkv), (DOWN, tables["model.layers.0.mlp.down_proj"])):
        exact = x @ table.T
        error = np.abs(outputs[node] - exact).max()
        int8_error = np.abs(rounded @ table.T - exact).max()
        assert error <= 1.5 * int8_error, node
