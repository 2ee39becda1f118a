"""GPTQ and AWQ safetensors checkpoints: their packed integers are read exactly, carried unchanged into the CPU
package, and an act-order checkpoint (groups out of order) is refused unless re-quantized."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from safetensors.numpy import load_file, save_file

from phiexport.quantize.gguf_blocks import BlockWeight
from phiexport.quantize.imported import import_weights
from phiexport.source.prequantized import dequantize, in_order, linear_weights
from tests.builder_graph import COLS, DOWN, builder_graph, run
from tests.conftest import assert_one_line_error, run_cli

AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]
GROUP = 32


def quantize(weight: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Asymmetric 4-bit round-to-nearest of `weight [N, K]`, input k in group groups[k]: codes [K, N], zeros and
    scales [groups, N]."""
    count = int(groups.max()) + 1
    scales = np.empty((count, weight.shape[0]), np.float16)
    zeros = np.empty((count, weight.shape[0]), np.int64)
    for group in range(count):
        block = weight[:, groups == group]
        low, high = np.minimum(block.min(1), 0), np.maximum(block.max(1), 0)
        scales[group] = np.maximum((high - low) / 15, 1e-6)
        zeros[group] = np.clip(np.rint(-low / scales[group].astype(np.float32)), 0, 15)
    step, zero = scales[groups].T.astype(np.float32), zeros[groups].T
    codes = np.clip(np.rint(weight / step) + zero, 0, 15).astype(np.int64)
    return codes.T, zeros, scales


def pack(codes: np.ndarray, axis: int, order: list[int] | None = None) -> np.ndarray:
    """Eight 4-bit codes an int32 word along `axis`, low bits first (in AWQ's order when given)."""
    moved = np.moveaxis(codes, axis, -1)
    eights = moved.reshape(*moved.shape[:-1], -1, 8)
    if order is not None:
        eights = eights[..., order]
    words = sum((eights[..., i].astype(np.uint32) << np.uint32(4 * i)) for i in range(8))
    return np.moveaxis(words.view(np.int32), -1, axis)


def packed_tensors(weight: np.ndarray, method: str, act_order: bool, rng: np.random.Generator) -> dict[str, np.ndarray]:
    width = weight.shape[1]
    groups = np.arange(width) // GROUP
    if act_order:
        groups = groups[rng.permutation(width)]
    codes, zeros, scales = quantize(weight, groups)
    if method == "awq":
        return {"qweight": pack(codes, 1, AWQ_ORDER), "qzeros": pack(zeros, 1, AWQ_ORDER), "scales": scales}
    return {
        "qweight": pack(codes, 0),
        "qzeros": pack((zeros - 1) & 15, 1),  # GPTQ's v1 layout stores zero − 1
        "scales": scales,
        "g_idx": groups.astype(np.int32),
    }


def write_prequantized(model: Path, output: Path, method: str, *, act_order: bool = False) -> Path:
    """The miniature `model` as a GPTQ or AWQ checkpoint: every decoder linear packed, the rest as it was."""
    shutil.copytree(model, output)
    rng = np.random.default_rng(0)
    tensors = load_file(model / "model.safetensors")
    for name in [name for name in tensors if ".layers." in name and name.endswith("_proj.weight")]:
        module = name.removesuffix(".weight")
        for suffix, value in packed_tensors(tensors.pop(name), method, act_order, rng).items():
            tensors[f"{module}.{suffix}"] = value
    save_file(tensors, output / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((output / "config.json").read_text())
    config["quantization_config"] = {"quant_method": method, "bits": 4, "group_size": GROUP}
    config["quantization_config"].update(
        {"version": "gemm", "zero_point": True} if method == "awq" else {"desc_act": act_order, "sym": False}
    )
    (output / "config.json").write_text(json.dumps(config))
    return output


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_packed_layout_reads_back_codes_zeros_and_scales(method):
    rng = np.random.default_rng(1)
    weight = rng.standard_normal((16, 64)).astype(np.float32)
    tensors = {f"layer.{key}": value for key, value in packed_tensors(weight, method, False, rng).items()}
    weights, groups = linear_weights(tensors, {"quant_method": method, "bits": 4, "group_size": GROUP})
    codes, zeros, scales = quantize(weight, np.arange(64) // GROUP)
    found = weights["layer"]
    assert in_order(found, groups["layer"]) and found.block_size == GROUP
    assert np.array_equal(found.codes, codes.T)
    expected = (codes.T - np.repeat(zeros, GROUP, 0).T) * np.repeat(scales.astype(np.float32), GROUP, 0).T
    assert np.array_equal(found.dequantize(), expected.astype(np.float32))
    assert np.array_equal(dequantize(found, groups["layer"]), found.dequantize())
    assert np.abs(found.dequantize() - weight).max() < 0.2  # and it is the weight, 4-bit rounded


@pytest.mark.parametrize("accuracy_level", [1, 4], ids=["fp32", "int8-activations"])
@pytest.mark.parametrize("bits", [4, 8])
def test_integer_zero_points_run_as_matmul_nbits_own(bits, accuracy_level, tmp_path):
    """GPTQ/AWQ zero points differ from block to block: MatMulNBits takes them as they are (8-bit codes in fp32
    split into 4-bit halves, the zero points with them), no offsets; the tied embedding gathers the same rows."""
    rng = np.random.default_rng(bits)
    rows = 24
    codes = rng.integers(0, 1 << bits, (rows, COLS)).astype(np.uint8)
    zeros = rng.integers(0, 1 << bits, (rows, COLS // GROUP))
    scales = rng.uniform(0.001, 0.01, (rows, COLS // GROUP)).astype(np.float16).astype(np.float32)
    weight = BlockWeight(bits, GROUP, codes, scales, -zeros.astype(np.float32) * scales)
    path = builder_graph(tmp_path / "model.onnx", {DOWN: rows}, vocab=rows)
    import_weights(path, {"model.layers.0.mlp.down_proj": weight, "lm_head": weight}, accuracy_level=accuracy_level)
    ids = np.array([[3, 0, 23]], dtype=np.int64)
    outputs = run(path, x=np.eye(COLS, dtype=np.float32)[None], input_ids=ids)
    expected = weight.dequantize()
    assert np.abs(outputs[DOWN][0].T - expected).max() <= 1e-6 * np.abs(expected).max()
    assert np.abs(outputs["embedding"][0] - expected[ids[0]]).max() <= 1e-6 * np.abs(expected).max()
    ops = [node.op_type for node in onnx.load(str(path), load_external_data=False).graph.node]
    assert "ReduceSum" not in ops or (accuracy_level == 1 and bits == 8)  # halves sum the embedding's two halves
    assert ops.count("MatMul") == 0  # no block offsets


@pytest.mark.slow
@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_checkpoint_builds_a_cpu_package_holding_its_integers(method, miniature_dirs, tmp_path):
    source = write_prequantized(miniature_dirs["llama"], tmp_path / method, method)
    output = tmp_path / "package"
    result = run_cli("build", str(source), "-t", "cpu", "--eval-sequences", "4", "-o", str(output), "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    manifest = json.loads((output / "cpu" / "manifest.json").read_text())
    imported = manifest["weights"]["imported"]
    layers = json.loads((source / "config.json").read_text())["num_hidden_layers"]
    assert imported["imported"] == {f"{method.upper()} int4 g{GROUP}": 7 * layers}
    assert imported["requantized"] == {"model.embed_tokens": "F32"}  # the tied table: the builder's int4
    assert imported["accuracy_level"] == 1
    # the package's integers are the checkpoint's: codes and zero points of one linear, unpacked from the graph
    packed = load_file(source / "model.safetensors")
    weights, _ = linear_weights(packed, {"quant_method": method, "bits": 4, "group_size": GROUP})
    expected = weights["model.layers.0.mlp.down_proj"]
    graph = onnx.load(str(output / "cpu" / "model.onnx")).graph
    tensors = {tensor.name: tensor for tensor in graph.initializer}
    node = "/model/layers.0/mlp/down_proj/MatMul_Q4"
    codes = numpy_helper.to_array(tensors[f"{node}/codes"]).reshape(expected.codes.shape[0], -1)
    zero_points = numpy_helper.to_array(tensors[f"{node}/zero_points"])
    unpack = lambda packed: np.stack([packed & 15, packed >> 4], -1).reshape(packed.shape[0], -1)  # noqa: E731
    assert np.array_equal(unpack(codes), expected.codes)
    assert np.array_equal(-unpack(zero_points).astype(np.float32) * expected.scales, expected.mins)
    assert manifest["source"]["files"]["model.safetensors"]["size"] == (source / "model.safetensors").stat().st_size


@pytest.mark.slow
def test_act_order_refused(miniature_dirs, tmp_path):
    """Act-order GPTQ is refused unless re-quantized (a short test name: the progress line must fit 80 columns)."""
    source = write_prequantized(miniature_dirs["llama"], tmp_path / "ao", "gptq", act_order=True)
    refused = run_cli("build", str(source), "-t", "cpu", "-o", str(tmp_path / "refused"))
    assert_one_line_error(refused, 2, "act-order GPTQ (desc_act)", "add --requantize")
    assert not (tmp_path / "refused").exists()
    output = tmp_path / "requantized"
    args = ("build", str(source), "-t", "cpu", "--requantize", "--eval-sequences", "4", "-o", str(output), "--json")
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "imported" not in json.loads((output / "cpu" / "manifest.json").read_text())["weights"]
