"""DirectML: the genai builder's DirectML graph (fp16 activations, int4 MatMulNBits or fp16 weights), checked
against the operators DirectML declares. DirectML needs Windows; here the same graph runs on the CPU EP."""

from phiexport.targets.target import Target

DML = Target(
    name="dml",
    execution_provider="dml",
    precisions=("int4", "fp16"),
    static_shapes=False,
    needs_calibration=False,
    evaluated_on="onnxruntime CPU execution provider running the DirectML graph unchanged (DirectML itself needs "
    "Windows; the graph's operators are checked against DirectML's declared list)",
    description="Windows GPUs and NPUs through onnxruntime-genai's DirectML execution provider: fp16 activations, "
    "int4 block-quantized weights",
    op_contract="directml",
    # DirectML declares no GatherBlockQuantized: a tied embedding stays an fp16 Gather beside an int4 LM head
    builder_options=(("shared_embeddings", "false"),),
    builder="phiexport.targets.genai_package",
)
