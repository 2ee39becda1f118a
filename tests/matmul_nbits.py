"""Run one MatMulNBits node in onnxruntime: what a package's quantized weight computes."""

from __future__ import annotations

import numpy as np


def matmul_nbits(inputs: np.ndarray, packed, scales, zero_points, *, bits: int, block: int) -> np.ndarray:
    """`inputs [M, K] @ Wᵀ` for the MatMulNBits weight (`zero_points` None: the default midpoint)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rows, width = scales.shape[0], inputs.shape[1]
    initializers = [numpy_helper.from_array(packed, "B"), numpy_helper.from_array(scales, "scales")]
    names = ["A", "B", "scales"]
    if zero_points is not None:
        initializers.append(numpy_helper.from_array(zero_points, "zero_points"))
        names.append("zero_points")
    node = helper.make_node(
        "MatMulNBits", names, ["Y"], domain="com.microsoft", K=width, N=rows, bits=bits, block_size=block
    )
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, [None, width])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, rows])],
        initializers,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
    )
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"A": inputs})[0]
