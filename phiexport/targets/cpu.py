"""CPU: dynamic shapes, MatMulNBits weight-only int4/int8 (or float weights), GroupQueryAttention KV cache."""

from phiexport.targets.target import Target

CPU = Target(
    name="cpu",
    execution_provider="cpu",
    precisions=("int4", "int8", "fp32"),
    static_shapes=False,
    needs_calibration=False,
    evaluated_on="onnxruntime CPU execution provider",
    description="x86/ARM CPUs through onnxruntime-genai's CPU execution provider",
    # onnxruntime's own thread default (one per physical core) rather than onnxruntime-genai's (half the hardware
    # threads): SmolLM2 decodes 1.33-1.44x faster, first token 30-45 % sooner (BENCHMARKS.md, decode table)
    session_options=(("intra_op_num_threads", 0),),
    # an untied token embedding in int4 blocks too, read by GatherBlockQuantized as the tied one is (the builder
    # keeps it in fp32 otherwise: 2.05 GB of Phi-4's 11 GB package); the LM head on the prompt's last position only
    # (onnxruntime-genai reads no other): SmolLM2's 512-token prompt no longer makes 100 MB of logits, and its first
    # token comes sooner (BENCHMARKS.md, decode_peers)
    builder_options=(("op_types_to_quantize", "MatMul/Gather"), ("prune_lm_head", "true")),
    imports_integers=True,
    builder="phiexport.targets.genai_package",
)
