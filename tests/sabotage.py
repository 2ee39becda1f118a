"""Deliberately broken packages, for tests that a broken package is caught."""

from pathlib import Path


def scramble_scales(model_path: Path, seed: int = 0, weights: int | None = None) -> int:
    """Sabotage a CPU package: shuffle the block scales of every MatMulNBits, or of the first `weights` scale tensors
    in graph order (the integers stay as they were). Returns the MatMulNBits nodes whose scales were shuffled."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(model_path)
    initializers = {init.name: init for init in model.graph.initializer}
    producers = {output: node for node in model.graph.node for output in node.output}
    rng = np.random.default_rng(seed)
    scrambled, done = 0, set()
    for node in model.graph.node:
        if node.op_type == "MatMulNBits":
            name = node.input[2]
            while name not in initializers:  # imported weights widen fp16 scales with a Cast (and Mul, Concat)
                name = producers[name].input[0]
            if name not in done:
                if weights is not None and len(done) == weights:
                    break
                scales = initializers[name]
                values = numpy_helper.to_array(scales)
                permuted = rng.permutation(values.ravel()).reshape(values.shape)
                scales.CopyFrom(numpy_helper.from_array(permuted, scales.name))
                done.add(name)
            scrambled += 1
    data = model_path.with_name(f"{model_path.name}.data")
    data.unlink()
    onnx.save_model(model, model_path, save_as_external_data=True, location=data.name)
    return scrambled
