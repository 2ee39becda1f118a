"""Weight-only quantization of the NPU package's CPU graphs through onnxruntime's MatMulNBits quantizer.

The token embedding becomes GatherBlockQuantized (int4, block 32: onnxruntime quantizes Gather only at 4 bits) and
the LM head MatMulNBits at 4 or 8 bits. The rotary tables in embeddings.onnx stay float: they are gathered by
position, and quantizing them would shift every rotation.
"""

from __future__ import annotations

from pathlib import Path

BLOCK = 32


def quantize_cpu_graph(path: Path, *, node: str, bits: int) -> None:
    """Quantize the weight read by the node named `node` (a Gather or MatMul) in `path`, in place."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    model = onnx.load(str(path))
    (op_type,) = {item.op_type for item in model.graph.node if item.name == node}
    config = DefaultWeightOnlyQuantConfig(
        block_size=BLOCK,
        is_symmetric=True,
        accuracy_level=4,
        op_types_to_quantize=(op_type,),
        quant_axes=(("MatMul", 0), ("Gather", 1)),
        bits=bits,
    )
    others = [item.name for item in model.graph.node if item.name != node]  # nodes_to_include only adds to op types
    quantizer = MatMulNBitsQuantizer(model, nodes_to_exclude=others, algo_config=config)
    quantizer.process()
    path.unlink()
    path.with_name(f"{path.stem}.data").unlink(missing_ok=True)
    onnx.save(quantizer.model.model, str(path), save_as_external_data=True, location=f"{path.stem}.data")
