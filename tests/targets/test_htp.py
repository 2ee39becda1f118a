import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from phiexport.errors import UsageError
from phiexport.targets.htp import SOCS, compile_context_binary, htp_session, soc

WIDTH = 128


def test_soc_by_readable_name_or_part_number():
    assert soc("x-elite").soc_model == 60 and soc("x-elite").htp_arch == 73
    assert soc("SM8750") == SOCS["8-elite"]
    assert soc(" X2-Elite ").chip == "SC8480XP"


def test_unknown_soc_lists_the_known_ones():
    with pytest.raises(UsageError, match="unknown SoC 'snapdragon-9000'") as caught:
        soc("snapdragon-9000")
    assert "x-elite" in caught.value.fix and "8-elite" in caught.value.fix


@pytest.fixture(scope="module")
def qdq_mlp(tmp_path_factory) -> tuple:
    """A MatMul → Relu → MatMul block quantized the way the NPU target quantizes: uint16 activations, uint8 weights."""
    from onnxruntime.quantization import CalibrationDataReader, QuantType, quantize
    from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config, qnn_preprocess_model

    directory = tmp_path_factory.mktemp("htp")
    rng = np.random.default_rng(0)
    weights = [
        (rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32) for shape in ((WIDTH, 256), (256, WIDTH))
    ]
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"]),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("MatMul", ["r", "w2"], ["y"]),
        ],
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, WIDTH])],
        [numpy_helper.from_array(weights[0], "w1"), numpy_helper.from_array(weights[1], "w2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, directory / "float.onnx")
    samples = [rng.standard_normal((1, 8, WIDTH)).astype(np.float32) for _ in range(8)]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.samples = iter(samples)

        def get_next(self):
            return next(({"x": sample} for sample in self.samples), None)

    prepared = directory / "prepared.onnx"
    source = prepared if qnn_preprocess_model(directory / "float.onnx", prepared) else directory / "float.onnx"
    config = get_qnn_qdq_config(source, Reader(), activation_type=QuantType.QUInt16, weight_type=QuantType.QUInt8)
    quantize(source, directory / "qdq.onnx", config)
    return directory, samples[0]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.mark.parametrize("name", ["x-elite", "8-elite"])
def test_context_binary_compiles_loads_and_matches_the_cpu(qdq_mlp, tmp_path, name):
    import onnxruntime as ort

    directory, x = qdq_mlp
    context = compile_context_binary(directory / "qdq.onnx", tmp_path / "mlp_ctx.onnx", soc(name))
    nodes = onnx.load(context).graph.node
    assert [node.op_type for node in nodes] == ["EPContext"]
    assert list(tmp_path.glob("*.bin")), "embed mode 0 writes the context binary beside the model"

    on_htp = htp_session(context, soc(name)).run(None, {"x": x})[0]  # CPU fallback disabled: all on the HTP
    on_cpu = ort.InferenceSession(directory / "qdq.onnx", providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    in_float = ort.InferenceSession(directory / "float.onnx", providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert cosine(on_htp, on_cpu) > 0.9999
    assert cosine(on_htp, in_float) > 0.999
