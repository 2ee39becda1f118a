"""Deliberately broken packages, for tests that a broken package is caught."""

from pathlib import Path


def scramble_scales(model_path: Path, seed: int = 0) -> int:
    """Sabotage a CPU package: shuffle the block scales of every MatMulNBits (the integers stay as they were)."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(model_path)
    initializers = {init.name: init for init in model.graph.initializer}
    rng = np.random.default_rng(seed)
    scrambled = 0
    for node in model.graph.node:
        if node.op_type == "MatMulNBits":
            scales = initializers[node.input[2]]
            values = numpy_helper.to_array(scales)
            scales.CopyFrom(numpy_helper.from_array(rng.permutation(values.ravel()).reshape(values.shape), scales.name))
            scrambled += 1
    data = model_path.with_name(f"{model_path.name}.data")
    data.unlink()
    onnx.save_model(model, model_path, save_as_external_data=True, location=data.name)
    return scrambled
