"""One body graph (or one part of it) from per-layer body graphs, without loading their weights.

Layer l's graph (a one-layer layout: hidden, the step tensors, past_key.0/past_value.0 → hidden_out,
present_key.0/present_value.0) has its internal names moved under `/layers.l/`, its cache inputs and outputs
renumbered, and its `hidden_out` wired to layer l+1's `hidden` (named as in the whole body, so a part's output is
the next part's input); the step tensors (cos, sin, mask, write, keep) stay shared. Weights are copied from each
layer's data file into the part's, a tensor at a time; a part's prefill and decode graphs hold the same weights and
share one data file (`WeightFile`), so a process running both maps them from one file and the page cache holds
them once.

Quantized per layer, the graphs repeat what the whole graph had once: every layer quantizes the shared inputs with
the same parameters, and a layer boundary becomes Q → DQ → Q → DQ with equal parameters. `merge_repeated_qdq` folds
both back (a Q after a DQ of equal parameters gives back the DQ's input exactly), so the stitched graph carries the
quantization a whole-graph pass would have.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from phiexport.export.static_graphs import (
    STEP_TENSORS,
    StaticLayout,
    body_input_names,
    body_output_names,
    residual_name,
)

SHARED_INPUTS = STEP_TENSORS


class WeightFile:
    """One external-data file written for several graphs: a tensor whose name and bytes are already in it points at
    those bytes, any other is appended."""

    def __init__(self, path: Path):
        self.path = path
        self._file = path.open("wb")
        self._written: dict[str, tuple[bytes, int, int]] = {}  # name → (sha256, offset, length)

    def place(self, tensor: Any, base: Path) -> None:
        """Store external `tensor`'s bytes (its location relative to `base`) and point it here."""
        entries = {entry.key: entry.value for entry in tensor.external_data}
        with (base / entries["location"]).open("rb") as source:
            source.seek(int(entries.get("offset", 0)))
            payload = source.read(int(entries["length"]))
        digest = hashlib.sha256(payload).digest()
        written = self._written.get(tensor.name)
        if written is None or written[0] != digest:
            written = (digest, self._file.tell(), len(payload))
            self._file.write(payload)
            self._written[tensor.name] = written
        del tensor.external_data[:]
        for key, value in (("location", self.path.name), ("offset", str(written[1])), ("length", str(written[2]))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value

    def __enter__(self) -> WeightFile:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self._file.close()


def stitch_layers(
    layer_graphs: list[Path], layout: StaticLayout, output: Path, data: WeightFile, *, first: int = 0
) -> Path:
    """Write the body graph of decoder layers `first` … (one one-layer graph each, in order) of `layout` to
    `output`, its weights to `data` (a file in the same folder)."""
    import onnx

    nodes: list[Any] = []
    initializers: list[Any] = []
    value_info: list[Any] = []
    model_0: Any = None
    for index, path in enumerate(layer_graphs):
        model = onnx.load(str(path), load_external_data=False)
        model_0 = model_0 or model
        rename = _renamer(first + index, layout.layers)
        for node in model.graph.node:
            node.name = rename(node.name)
            node.input[:] = [rename(name) if name else name for name in node.input]
            node.output[:] = [rename(name) for name in node.output]
            nodes.append(node)
        for tensor in model.graph.initializer:
            tensor.name = rename(tensor.name)
            if tensor.data_location == onnx.TensorProto.EXTERNAL:
                data.place(tensor, path.parent)
            initializers.append(tensor)
        for info in model.graph.value_info:
            info.name = rename(info.name)
            value_info.append(info)
    inputs = {info.name: info for info in model_0.graph.input}
    outputs = {info.name: info for info in model_0.graph.output}
    layers = range(first, first + len(layer_graphs))
    graph = onnx.helper.make_graph(
        nodes,
        "body",
        [_renamed_info(inputs, name, "hidden") for name in body_input_names(layout, layers)],
        [_renamed_info(outputs, name, "hidden_out") for name in body_output_names(layout, layers)],
        initializers,
        value_info=value_info,
    )
    merge_repeated_qdq(graph)
    model = onnx.helper.make_model(graph, opset_imports=model_0.opset_import, ir_version=model_0.ir_version)
    onnx.save(model, str(output))
    return output


def merge_repeated_qdq(graph: Any) -> int:
    """Fold repeated quantization in `graph` (in place): Q(DQ(x)) with equal parameters becomes x, and Q or DQ
    nodes reading the same tensor with equal parameters become one. Returns how many nodes were removed."""
    removed = 0
    while True:
        values = {tensor.name: _value_key(tensor) for tensor in graph.initializer}
        producer = {name: node for node in graph.node for name in node.output}
        protected = {info.name for info in graph.output}
        replace: dict[str, str] = {}
        seen: dict[tuple[Any, ...], str] = {}
        for node in graph.node:
            if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or node.output[0] in protected:
                continue
            params = (tuple(values.get(name) for name in node.input[1:]), _attributes(node))
            source = producer.get(node.input[0])
            if (
                node.op_type == "QuantizeLinear"
                and source is not None
                and source.op_type == "DequantizeLinear"
                and (tuple(values.get(name) for name in source.input[1:]), _attributes(source)) == params
            ):
                replace[node.output[0]] = source.input[0]
                continue
            key = (node.op_type, node.input[0], params)
            if key in seen:
                replace[node.output[0]] = seen[key]
            else:
                seen[key] = node.output[0]
        if not replace:
            return removed
        kept = [node for node in graph.node if node.output[0] not in replace]
        removed += len(graph.node) - len(kept)
        for node in kept:
            node.input[:] = [_resolve(replace, name) for name in node.input]
        del graph.node[:]
        graph.node.extend(kept)
        used = {name for node in graph.node for name in node.input}
        unused = [tensor for tensor in graph.initializer if tensor.name not in used]
        for tensor in unused:
            graph.initializer.remove(tensor)


def _renamer(index: int, layers: int) -> Callable[[str], str]:
    """Names of layer `index`'s graph (of `layers`) in the stitched body."""
    fixed = {
        "hidden": residual_name(index, layers),
        "hidden_out": residual_name(index + 1, layers),
        **{name: name for name in SHARED_INPUTS},
        **{f"{kind}.0": f"{kind}.{index}" for kind in ("past_key", "past_value", "present_key", "present_value")},
    }

    def rename(name: str) -> str:
        if name in fixed:
            return fixed[name]
        for prefix in ("/layers.0/", "layers.0."):  # names the exporter gave the layer's own modules
            if name.startswith(prefix):
                return prefix.replace("0", str(index)) + name[len(prefix) :]
        return f"/layers.{index}/{name.lstrip('/')}"

    return rename


def _renamed_info(infos: dict[str, Any], name: str, residual: str) -> Any:
    """The first layer's declaration of a body input or output, under its stitched name (`residual`: the
    one-layer graph's name of the residual stream on that side)."""
    import copy

    generic = residual if name.startswith("hidden") else name if name in infos else f"{name.rsplit('.', 1)[0]}.0"
    info = copy.deepcopy(infos[generic])
    info.name = name
    return info


def _value_key(tensor: Any) -> Any:
    """What identifies an initializer's value: its bytes when inline, its name when stored outside."""
    from onnx import TensorProto, numpy_helper

    if tensor.data_location == TensorProto.EXTERNAL:
        return ("external", tensor.name)
    array = numpy_helper.to_array(tensor)
    return (tensor.data_type, tuple(array.shape), array.tobytes())


def _attributes(node: Any) -> tuple[Any, ...]:
    return tuple(sorted((attribute.name, attribute.SerializeToString()) for attribute in node.attribute))


def _resolve(replace: dict[str, str], name: str) -> str:
    while name in replace:
        name = replace[name]
    return name
