import onnx.helper
import pytest

from phiexport.errors import BuildError, UsageError
from phiexport.quantize.weight_only import builder_options, check_block_layout, check_weight_nodes
from phiexport.recipe import QuantizationConfig

SMOLLM2 = {"hidden_size": 576, "num_attention_heads": 9, "intermediate_size": 1536}


def matmul_nbits(bits=4, block_size=32, accuracy_level=4, zero_points=False):
    inputs = ["x", "w", "scales"] + (["zp"] if zero_points else [])
    return onnx.helper.make_node(
        "MatMulNBits",
        inputs,
        ["y"],
        domain="com.microsoft",
        K=576,
        N=576,
        bits=bits,
        block_size=block_size,
        accuracy_level=accuracy_level,
    )


def test_symmetric_rtn_uses_the_builder_default_quantizer():
    options = builder_options(QuantizationConfig(block_size=64))
    assert options == {"block_size": "64", "is_symmetric": "true", "accuracy_level": "4"}


def test_zero_point_methods_name_their_algorithm():
    assert builder_options(QuantizationConfig(symmetric=False))["algo_config"] == "rtn"
    assert builder_options(QuantizationConfig(method="k_quant"))["algo_config"] == "k_quant"
    assert builder_options(QuantizationConfig(method="k_quant"))["is_symmetric"] == "false"


def test_float_precision_passes_no_quantizer_options():
    assert builder_options(QuantizationConfig(precision="fp32")) == {}


@pytest.mark.parametrize("block_size", [64, 128, 256])
def test_odd_block_count_with_zero_points_is_refused(block_size):
    with pytest.raises(UsageError, match=f"width 576 at block_size {block_size}"):
        check_block_layout(SMOLLM2, QuantizationConfig(method="k_quant", block_size=block_size))


def test_even_block_counts_and_symmetric_weights_are_accepted():
    check_block_layout(SMOLLM2, QuantizationConfig(method="k_quant", block_size=32))  # 18 and 48 blocks
    check_block_layout(SMOLLM2, QuantizationConfig(block_size=128))  # no zero points to pack
    check_block_layout(SMOLLM2, QuantizationConfig(precision="int8", symmetric=False, block_size=64))


def test_weight_nodes_matching_the_request_are_summarised():
    nodes = [matmul_nbits(), matmul_nbits(), onnx.helper.make_node("GatherBlockQuantized", ["a", "b", "c"], ["d"])]
    summary = check_weight_nodes(nodes, QuantizationConfig())
    assert summary["matmul_nbits"] == 2
    assert summary["gather_block_quantized"] == 1
    assert (summary["bits"], summary["block_size"], summary["zero_points"]) == (4, 32, False)


@pytest.mark.parametrize(
    "node",
    [matmul_nbits(block_size=64), matmul_nbits(bits=8), matmul_nbits(accuracy_level=0), matmul_nbits(zero_points=True)],
)
def test_an_ignored_option_fails_the_build(node):
    with pytest.raises(BuildError, match="the builder ignored an option"):
        check_weight_nodes([matmul_nbits(), node], QuantizationConfig())


def test_integer_precision_without_matmulnbits_fails():
    with pytest.raises(BuildError, match="no MatMulNBits"):
        check_weight_nodes([onnx.helper.make_node("MatMul", ["a", "b"], ["c"])], QuantizationConfig())
