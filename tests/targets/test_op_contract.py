"""The DirectML operator contract: the graphs phiexport writes stay within what DirectML declares it runs."""

import onnx
import pytest
from onnx import TensorProto, helper

from phiexport.errors import BuildError
from phiexport.targets.op_contract import load_contract
from scripts.operator_kernels import parse_section

DIRECTML = load_contract("directml")


def save_graph(path, nodes, opset=21):
    """A float16 graph x → nodes → y; every node reads `x` or the previous output."""
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, None)],
    )
    opsets = [helper.make_opsetid("", opset), helper.make_opsetid("com.microsoft", 1)]
    onnx.save(helper.make_model(graph, opset_imports=opsets), path)
    return path


def test_a_graph_with_an_op_directml_lacks_is_rejected_naming_it(tmp_path):
    # GatherBlockQuantized is what the builder writes for a tied int4 embedding on the CPU path
    nodes = [
        helper.make_node("Sigmoid", ["x"], ["s"], name="ok"),
        helper.make_node(
            "GatherBlockQuantized", ["s", "ids", "scales"], ["y"], name="/model/embed", domain="com.microsoft"
        ),
    ]
    with pytest.raises(BuildError) as error:
        DIRECTML.check(save_graph(tmp_path / "m.onnx", nodes))
    assert "DirectML does not run: com.microsoft::GatherBlockQuantized (1 nodes, e.g. /model/embed)" in str(error.value)
    assert "OperatorKernels.md at 001d12d2623f" in str(error.value)


def test_an_onnx_op_newer_than_every_directml_kernel_is_rejected(tmp_path):
    # Sin has kernels for schema 7 only; opset 22 gives it schema 22, which onnxruntime would run on the CPU
    nodes = [helper.make_node("Sin", ["x"], ["y"], name="sin")]
    with pytest.raises(BuildError, match=r"ai\.onnx::Sin-22"):
        DIRECTML.check(save_graph(tmp_path / "new.onnx", nodes, opset=22))
    assert DIRECTML.check(save_graph(tmp_path / "old.onnx", nodes, opset=21))["checked_nodes"] == 1


def test_constants_are_not_operators_an_execution_provider_runs(tmp_path):
    value = helper.make_tensor("c", TensorProto.FLOAT16, [1], [1.0])
    nodes = [helper.make_node("Constant", [], ["c"], value=value), helper.make_node("Add", ["x", "c"], ["y"])]
    assert DIRECTML.check(save_graph(tmp_path / "m.onnx", nodes, opset=21))["checked_nodes"] == 2


def test_the_builders_directml_operators_are_in_the_contract():
    for op in ("GroupQueryAttention", "MatMulNBits", "RotaryEmbedding", "SkipSimplifiedLayerNormalization"):
        assert ("com.microsoft", op) in DIRECTML.versions
    assert ("com.microsoft", "GatherBlockQuantized") not in DIRECTML.versions


def test_operator_kernels_markdown_is_parsed_with_continuation_rows():
    markdown = "\n".join(
        [
            "## Operators implemented by DmlExecutionProvider",
            "| Op Name | Parameters | OpSet Version | Types Supported |",
            "|---------|------------|---------------|-----------------|",
            "|**Operator Domain:** *ai.onnx*||||",
            "|Add|*in* A:**T**|14+|**T** = tensor(float)|",
            "|||7+|**T** = tensor(float)|",
            "|**Operator Domain:** *com.microsoft*||||",
            "|MatMulNBits|*in* A:**T1**|1+|**T1** = tensor(float16)|",
            "",
            '<a name="next"/>',
            "## Operators implemented by OtherExecutionProvider",
            "|Sub|x|1+|y|",
        ]
    )
    ops = parse_section(markdown, "DmlExecutionProvider")
    assert ops["ai.onnx"]["Add"]["versions"] == ["14+", "7+"]
    assert list(ops["com.microsoft"]) == ["MatMulNBits"]
    assert "Sub" not in ops["ai.onnx"]
