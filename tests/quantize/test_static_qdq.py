"""Calibration draws and the HTP block-layout guard of the NPU quantization."""

import numpy as np
import pytest

from phiexport.errors import UsageError
from phiexport.quantize.calibration import log_uniform_fills
from phiexport.quantize.static_qdq import check_htp_blocks

SMOLLM2 = {"hidden_size": 576, "intermediate_size": 1536, "num_attention_heads": 9, "num_key_value_heads": 3}


def test_fills_cover_short_contexts_and_stay_in_range():
    fills = log_uniform_fills(256, 2000, np.random.default_rng(0))
    assert min(fills) == 0 and max(fills) <= 255
    assert np.mean(np.asarray(fills) < 16) > 0.4  # log-uniform: half the draws below 16 of 256 (uniform: 6 %)
    assert log_uniform_fills(256, 5, np.random.default_rng(1)) == log_uniform_fills(256, 5, np.random.default_rng(1))


@pytest.mark.parametrize(("block_size", "ok"), [(32, True), (16, True), (64, False), (128, False)])
def test_htp_blocks_need_an_even_count_per_row(block_size, ok):
    if ok:
        check_htp_blocks(SMOLLM2, block_size)
    else:
        with pytest.raises(UsageError, match="width 576"):
            check_htp_blocks(SMOLLM2, block_size)


def _matmul_graph(path, weight: np.ndarray) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="matmul")],
        "one-matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, weight.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, weight.shape[1]])],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    onnx.save(model, str(path), save_as_external_data=True, location=f"{path.stem}.data", size_threshold=0)


@pytest.mark.parametrize("bits", [4, 8])
def test_block_weights_are_the_bytes_of_onnxruntimes_blocked_quantizer(tmp_path, bits):
    """write_block_weights replaces onnxruntime's per-block Python loop; the integers, scales and zero points must
    be the ones that loop writes (a zero block and an odd row count included). The activation ranges, read a batch
    of samples at a time, are the ones onnxruntime's calibrator finds holding every sample."""
    import onnx
    from onnx import numpy_helper
    from onnxruntime.quantization import QuantType, quantize
    from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config

    from phiexport.quantize.calibration import FeedReader
    from phiexport.quantize.static_qdq import quantize_body

    rng = np.random.default_rng(0)
    weight = rng.standard_normal((96, 40)).astype(np.float32) * rng.uniform(0.01, 3.0, (96, 1)).astype(np.float32)
    weight[32:64, 5] = 0.0
    _matmul_graph(tmp_path / "fp32.onnx", weight)
    feeds = [{"x": rng.standard_normal((1, 4, 96)).astype(np.float32)} for _ in range(9)]
    feeds[0]["x"] *= 10  # the widest range in the first batch of 3: a batch's ranges must not be lost

    ours = quantize_body(
        tmp_path / "fp32.onnx", FeedReader.of(feeds), tmp_path / "ours.onnx", weight_bits=bits, block_size=32
    )
    kind = QuantType.QInt4 if bits == 4 else QuantType.QInt8
    config = get_qnn_qdq_config(
        str(tmp_path / "fp32.onnx"),
        FeedReader.of(feeds),
        activation_type=QuantType.QUInt16,
        weight_type=QuantType.QUInt8,
        init_overrides={"w": [{"quant_type": kind, "symmetric": True, "axis": 0}]},
    )
    config.extra_options["BlockSize"] = 32
    config.extra_options["UseQDQContribOps"] = False
    quantize(str(tmp_path / "fp32.onnx"), str(tmp_path / "theirs.onnx"), config)

    def weight_tensors(path):
        model = onnx.load(str(path))
        tensors = {t.name: t for t in model.graph.initializer if t.name.startswith("w_")}
        (node,) = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == "w_quantized"]
        return tensors, {a.name: a.i for a in node.attribute}

    def activation_range(path):  # what calibration gave the input's quantization
        tensors = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}
        return tensors["x_scale"], tensors["x_zero_point"]

    # quantize_body reads the samples in batches of 3 (onnxruntime's strided min/max); unstrided here
    assert activation_range(ours) == activation_range(tmp_path / "theirs.onnx")
    (mine, my_attributes), (theirs, their_attributes) = weight_tensors(ours), weight_tensors(tmp_path / "theirs.onnx")
    assert my_attributes == their_attributes == {"axis": 0, "block_size": 32}
    assert set(mine) == set(theirs) == {"w_quantized", "w_scale", "w_zero_point"}
    for name in mine:
        assert mine[name].data_type == theirs[name].data_type, name
        assert np.array_equal(numpy_helper.to_array(mine[name]), numpy_helper.to_array(theirs[name])), name


@pytest.mark.parametrize(
    ("targets", "rotate", "refused"),
    [(["npu"], True, True), (["cpu", "npu"], False, True), (["cpu", "npu"], True, False), (["cpu"], True, False)],
)
def test_a_measured_mix_reaches_the_npu_only_through_the_cpu_targets_weights(targets, rotate, refused):
    """`mixed: auto` scores the whole model; the NPU build holds one layer, so it must reuse the CPU target's
    weights (which needs the same rotation: the NPU rotates by default) or be refused before anything is built."""
    from phiexport.recipe import parse_recipe
    from phiexport.targets.npu.build import check_npu_weights

    recipe = parse_recipe(
        {
            "version": 1,
            "name": "m",
            "source": {"model": "any"},
            "targets": targets,
            "quantization": {"method": "gptq", "mixed": "auto", "rotate": rotate},
        },
        origin="test",
    )
    if refused:
        with pytest.raises(UsageError, match="mixed: auto"):
            check_npu_weights(recipe)
    else:
        check_npu_weights(recipe)
