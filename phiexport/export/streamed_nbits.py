"""The builder's int4/int8 weight quantization, one weight at a time as the package is written.

The onnxruntime-genai builder's `to_nbits` turns the whole graph into one protobuf with every weight in fp32 and
then quantizes it: 22.7 GiB peak RSS on a Phi-4-mini-shaped checkpoint (BENCHMARKS.md). Here each MatMul becomes
the same MatMulNBits node (and an untied embedding's Gather the same GatherBlockQuantized) with the same initializer
names and bytes (onnxruntime's own block quantizers), but the
quantized weights are lazy tensors, computed in column chunks from the checkpoint's tensor when `ir.save` writes
them and dropped right after. Weights stay memory-mapped: transformers maps the safetensors files, the copies the
builder makes (Phi-3's fused qkv re-packed) are spilled to a scratch file and mapped, and each chunk's pages are
given back once quantized. Written here because the builder has no streaming mode; only its default (MLAS)
quantizer is streamed, every other configuration keeps the builder's own path.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from phiexport.source.mapped import drop_mapped_pages, file_backed

COLUMNS_PER_CHUNK = 8192  # output columns (or table rows) quantized at once: 100 MB of fp32 at width 3072
SPILL_BYTES = 1 << 20  # in-memory tensors at least this large are moved to a mapped scratch file


@contextmanager
def streamed_weight_quantization(scratch: Path) -> Iterator[None]:
    """Within the block, builder models quantize lazily where `_streamable` holds (patched on the builder's base
    class, restored on exit); large in-memory tensors the builder registers are spilled into `scratch`."""
    import torch
    from onnxruntime_genai.models import builder

    # the builder puts its own folder on sys.path and imports `builders.base`: its classes live in that module
    Model = builder.LlamaModel.__mro__[-2]
    make_initializer, to_nbits = Model.make_initializer, Model.to_nbits

    def recording_make_initializer(self: Any, tensor: Any, /, name: str, **options: Any) -> Any:
        if isinstance(tensor, torch.Tensor):  # kept, to quantize it chunk by chunk from its mapped pages
            if tensor.numel() * tensor.element_size() >= SPILL_BYTES and not file_backed(tensor):
                tensor = _spilled(tensor, scratch)
            vars(self).setdefault("_phiexport_sources", {})[name] = tensor
        return make_initializer(self, tensor, name, **options)

    def streamed_to_nbits(self: Any) -> Any:
        return _lazy_to_nbits(self) if _streamable(self) else to_nbits(self)

    Model.make_initializer, Model.to_nbits = recording_make_initializer, streamed_to_nbits
    try:
        yield
    finally:
        Model.make_initializer, Model.to_nbits = make_initializer, to_nbits


def _streamable(builder: Any) -> bool:
    """The builder's default quantizer in its plain form: MatMul weights, and an untied embedding's Gather when it
    is int4 symmetric (a tied embedding reads the LM head's weights)."""
    quant = builder.quant_attrs
    return (
        getattr(builder, "quantization_algo", "default") == "default"
        and builder.quant_type is None
        and not quant["use_qdq"]
        and not getattr(builder, "int4_customized_weight_config", None)
        and not getattr(builder, "exact_quant_overrides", None)
        and (_gathers_in_int4(builder) or int(quant["bits"]) == 8 or not _quantizable_gathers(builder))
    )


def _gathers_in_int4(builder: Any) -> bool:
    """Whether onnxruntime's quantizer turns the constant Gathers into symmetric int4 GatherBlockQuantized (at 8 bits
    it leaves them in float, as the streamed path does)."""
    return int(builder.quant_attrs["bits"]) == 4 and bool(builder.quant_attrs["is_symmetric"])


def _quantizable_gathers(builder: Any) -> list[Any]:
    if "Gather" not in builder.quant_attrs["op_types_to_quantize"]:
        return []
    excluded = set(builder.quant_attrs["nodes_to_exclude"])
    return [
        node
        for node in builder.model.graph
        if node.op_type == "Gather" and node.name not in excluded and node.inputs[0].const_value is not None
    ]


def _lazy_to_nbits(builder: Any) -> Any:
    import onnx_ir as ir
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        DefaultWeightOnlyQuantizer,
    )

    quant = builder.quant_attrs
    bits, block_size = int(quant["bits"]), int(quant["matmul_block_size"])
    config = DefaultWeightOnlyQuantConfig(
        block_size=block_size,
        is_symmetric=quant["is_symmetric"],
        accuracy_level=quant["accuracy_level"],
        bits=bits,
    )
    kernel = DefaultWeightOnlyQuantizer(config)
    sources = vars(builder).get("_phiexport_sources", {})
    graph = builder.model.graph
    excluded = set(quant["nodes_to_exclude"])
    gathers = {id(node) for node in _quantizable_gathers(builder)} if _gathers_in_int4(builder) else set()
    for node in list(graph):  # in graph order, as onnxruntime's quantizer adds the initializers
        if id(node) in gathers:
            _lazy_gather(builder, node, block_size, sources)
            continue
        weight = node.inputs[1] if node.op_type == "MatMul" and len(node.inputs) > 1 else None
        if node.name in excluded or weight is None or weight.const_value is None or len(weight.shape) != 2:
            continue
        rows, cols = (int(d) for d in weight.shape)
        blocks = -(-rows // block_size)
        lazy = _LazyQuantized(sources.get(weight.name, weight.const_value), weight.dtype, kernel, cols)
        tensors = [
            (f"{weight.name}_Q{bits}", lazy.packed, ir.DataType.UINT8, [cols, blocks, block_size * bits // 8]),
            (f"{weight.name}_scales", lazy.scales, weight.dtype, [cols, blocks]),
        ]
        if not config.is_symmetric:
            tensors.append((f"{weight.name}_zero_points", lazy.zero_points, ir.DataType.UINT8, [cols, -(-blocks // 2)]))
        inputs = [node.inputs[0]]
        for name, func, dtype, shape in tensors:
            value = builder.make_value(name, dtype, shape)  # a tied embedding may already read it by name
            value.const_value = ir.LazyTensor(func, dtype=dtype, shape=ir.Shape(shape), name=name)
            inputs.append(value)
        attributes = {"K": rows, "N": cols, "bits": bits, "block_size": block_size}
        if config.accuracy_level:
            attributes["accuracy_level"] = config.accuracy_level
        replacement = ir.node("MatMulNBits", inputs, attributes, domain="com.microsoft", name=f"{node.name}_Q{bits}")
        ir.convenience.replace_nodes_and_values(
            graph, node, [node], [replacement], list(node.outputs), list(replacement.outputs)
        )
        graph.initializers.pop(weight.name)
        weight.const_value = None  # the builder's lazy fp32 copy would keep the source alive
        for value in inputs[1:]:
            graph.register_initializer(value)
    builder.model.opset_imports.setdefault("com.microsoft", 1)
    return builder.model


def _lazy_gather(builder: Any, node: Any, block_size: int, sources: dict[str, Any]) -> None:
    """The Gather of a constant table (an untied token embedding) as onnxruntime's quantizer writes it: symmetric int4
    GatherBlockQuantized in blocks along each row, the table quantized a chunk of rows at a time when written."""
    import onnx_ir as ir

    table = node.inputs[0]
    rows, cols = (int(d) for d in table.shape)
    lazy = _LazyGatherTable(sources.get(table.name, table.const_value), table.dtype, block_size, rows, cols)
    inputs = []
    for name, func, dtype, shape in (
        (f"{table.name}_Q4", lazy.packed, ir.DataType.INT4, [rows, cols]),
        (f"{table.name}_scales", lazy.scales, table.dtype, [rows, -(-cols // block_size)]),
    ):
        value = builder.make_value(name, dtype, shape)
        value.const_value = ir.LazyTensor(func, dtype=dtype, shape=ir.Shape(shape), name=name)
        inputs.append(value)
    axis = node.attributes.get("axis")
    attributes = {"gather_axis": 0 if axis is None else axis.as_int(), "quantize_axis": 1, "block_size": block_size}
    replacement = ir.node(
        "GatherBlockQuantized",
        [inputs[0], node.inputs[1], inputs[1]],
        attributes,
        domain="com.microsoft",
        name=f"{node.name}_Q4",
    )
    ir.convenience.replace_nodes_and_values(
        builder.model.graph, node, [node], [replacement], list(node.outputs), list(replacement.outputs)
    )
    builder.model.graph.initializers.pop(table.name)
    table.const_value = None
    for value in inputs:
        builder.model.graph.register_initializer(value)


class _LazyQuantized:
    """One weight's packed integers, scales and zero points: computed on the first request, in column chunks,
    and forgotten once the last of them has been handed out (ir.save writes them one after another)."""

    def __init__(self, source: Any, dtype: Any, kernel: Any, cols: int):
        self._source, self._dtype, self._kernel, self._cols = source, dtype, kernel, cols
        self._parts: dict[str, Any] = {}
        self._pending = {"packed", "scales"} | (set() if kernel.config.is_symmetric else {"zero_points"})

    def packed(self) -> Any:
        return self._take("packed")

    def scales(self) -> Any:
        return self._take("scales")

    def zero_points(self) -> Any:
        return self._take("zero_points")

    def _take(self, part: str) -> Any:
        import numpy as np
        import onnx_ir as ir
        import torch

        if not self._parts:
            # a torch tensor is read chunk by chunk from its mapped pages; anything else (an ONNX tensor) once
            source = self._source if isinstance(self._source, torch.Tensor) else self._source.numpy()
            chunks = [self._quantize(source, start) for start in range(0, self._cols, COLUMNS_PER_CHUNK)]
            self._parts = {key: np.concatenate([c[key] for c in chunks]) for key in ("packed", "scales", "zero_points")}
            self._source = None
        array = self._parts[part]
        self._pending.discard(part)
        if not self._pending:
            self._parts = {}
        return ir.Tensor(array)

    def _quantize(self, source: Any, start: int) -> dict[str, Any]:
        import numpy as np
        import torch
        from onnx_ir.tensor_adapters import to_torch_dtype

        stop = min(start + COLUMNS_PER_CHUNK, self._cols)
        if isinstance(source, torch.Tensor):  # [K, N], often a transposed view of the checkpoint's [N, K]
            view = source[:, start:stop]
            chunk = view.to(to_torch_dtype(self._dtype)).numpy()
            drop_mapped_pages(view)
        else:
            chunk = source[:, start:stop].astype(self._dtype.numpy())
        packed, scales, zero_points = self._kernel.qbits_block_quant(np.ascontiguousarray(chunk))
        return {"packed": packed, "scales": scales, "zero_points": zero_points}


class _LazyGatherTable:
    """A token table's int4 codes and scales, computed a chunk of rows at a time with onnxruntime's own numpy block
    quantizer (the one its Gather quantization calls) on the first request, forgotten once both are handed out."""

    def __init__(self, source: Any, dtype: Any, block_size: int, rows: int, cols: int):
        self._source, self._dtype, self._block_size, self._shape = source, dtype, block_size, (rows, cols)
        self._parts: dict[str, Any] = {}
        self._pending = {"packed", "scales"}

    def packed(self) -> Any:
        import onnx_ir as ir

        return ir.PackedTensor(self._take("packed"), ir.DataType.INT4, shape=ir.Shape(self._shape))

    def scales(self) -> Any:
        import onnx_ir as ir

        return ir.Tensor(self._take("scales"))

    def _take(self, part: str) -> Any:
        import numpy as np
        import torch
        from onnx_ir.tensor_adapters import to_torch_dtype
        from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantizer

        if not self._parts:
            packed, scales = [], []
            for start in range(0, self._shape[0], COLUMNS_PER_CHUNK):
                if isinstance(self._source, torch.Tensor):
                    view = self._source[start : start + COLUMNS_PER_CHUNK]
                    chunk = view.to(to_torch_dtype(self._dtype)).numpy()
                    drop_mapped_pages(view)
                else:
                    chunk = self._source.numpy()[start : start + COLUMNS_PER_CHUNK]
                codes, chunk_scales, _ = DefaultWeightOnlyQuantizer.quantize_ndarray(chunk, 1, self._block_size, True)
                packed.append(codes.reshape(-1))
                scales.append(chunk_scales)
            self._parts = {"packed": np.concatenate(packed), "scales": np.concatenate(scales)}
            self._source = None
        array = self._parts[part]
        self._pending.discard(part)
        if not self._pending:
            self._parts = {}
        return array


def _spilled(tensor: Any, scratch: Path) -> Any:
    """The same values in a private mapping of a scratch file, unlinked at once (the mapping keeps it alive).

    A transposed view (the builder registers `weight.T`) is spilled in its own row-major layout, without a copy.
    """
    import torch

    transposed = tensor.dim() == 2 and not tensor.is_contiguous() and tensor.T.is_contiguous()
    values = (tensor.T if transposed else tensor).contiguous()
    scratch.mkdir(parents=True, exist_ok=True)
    descriptor, name = tempfile.mkstemp(prefix="spill-", dir=scratch)
    try:
        with os.fdopen(descriptor, "wb") as file:
            values.reshape(-1).view(torch.uint8).numpy().tofile(file)
        mapped = torch.from_file(name, shared=False, size=values.numel(), dtype=values.dtype).view(values.shape)
    finally:
        os.unlink(name)
    return mapped.T if transposed else mapped
