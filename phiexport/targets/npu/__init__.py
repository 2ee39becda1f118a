"""Qualcomm NPU target, Phi Silica-style: w4a16 body parts, each a 64-token prefill graph and a 1-token decode graph
sharing one copy of the weights in a precompiled HTP context binary; embeddings and LM head on the CPU. The package is
built by `build.py`: vocabulary graphs → a decoder layer at a time (layers.py) → context binaries per part and SoC
(contexts.py) → a check through onnxruntime-genai on the HTP simulator (simulator.py)."""

from phiexport.targets.target import Target

NPU = Target(
    name="npu",
    execution_provider="qnn",
    precisions=("int4", "int8"),
    static_shapes=True,
    needs_calibration=True,
    evaluated_on="onnxruntime CPU execution provider running the same QDQ graphs, plus a short run on the HTP "
    "simulator (onnxruntime-qnn)",
    description="Qualcomm Hexagon NPUs through onnxruntime-qnn: 4-bit per-channel weights, uint16 activations, "
    "a prefill-chunk and a 1-token decode graph sharing weights in HTP context binaries",
    builder="phiexport.targets.npu.build",
)
