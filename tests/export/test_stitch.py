"""Per-layer body graphs stitched into one compute what the whole-model export computes, a part's prefill and decode
graphs keep one copy of their weights, and quantization repeated at layer boundaries folds back into one Q/DQ
pair."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from transformers import AutoModelForCausalLM

from phiexport.export.static_graphs import StaticLayout, body_example, export_layer_graphs, export_static_graphs
from phiexport.export.stitch import WeightFile, merge_repeated_qdq, stitch_layers
from phiexport.runtime.static_pipeline import cpu_session, exact_session


@pytest.mark.parametrize("architecture", ["phi3", "qwen3"])
def test_stitched_layers_compute_the_whole_body(architecture, miniature_dirs, tmp_path):
    checkpoint = miniature_dirs[architecture]
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    layout = StaticLayout.from_config(json.loads((checkpoint / "config.json").read_text()), context=128, chunk=16)
    whole = export_static_graphs(model, layout, tmp_path / "whole")
    parts: dict[str, list[Path]] = {"prefill": [], "decode": []}
    for index, layer in enumerate(model.model.layers):
        for kind, path in export_layer_graphs(layer, layout, tmp_path / f"layer{index}").items():
            parts[kind].append(path)
    with WeightFile(tmp_path / "prefill_alone.data") as alone:
        stitch_layers(parts["prefill"], layout, tmp_path / "prefill_alone.onnx", alone)
    with WeightFile(tmp_path / "stitched.data") as shared:
        stitched_graphs = {
            kind: stitch_layers(parts[kind], layout, tmp_path / f"stitched_{kind}.onnx", shared) for kind in parts
        }
    # the decode graph's weights are the prefill graph's: the shared file is no larger than the prefill's alone
    weights = sum(parameter.numel() * 4 for parameter in model.model.layers.parameters())
    assert (tmp_path / "stitched.data").stat().st_size == (tmp_path / "prefill_alone.data").stat().st_size
    assert weights * 0.9 < (tmp_path / "stitched.data").stat().st_size <= weights
    rng = np.random.default_rng(0)
    for kind, steps in (("prefill", layout.chunk), ("decode", 1)):
        stitched = stitched_graphs[kind]
        feed = {
            info.name: rng.standard_normal(np.asarray(example).shape).astype(np.float32)
            for info, example in zip(cpu_session(stitched).get_inputs(), body_example(layout, steps), strict=True)
        }
        feed["mask"] = np.zeros_like(feed["mask"])
        expected = cpu_session(whole[kind]).run(None, feed)
        found = cpu_session(stitched).run(None, feed)
        assert [item.name for item in cpu_session(stitched).get_outputs()] == [
            item.name for item in cpu_session(whole[kind]).get_outputs()
        ]
        for want, got in zip(expected, found, strict=True):
            assert np.abs(want - got).max() < 1e-4 * max(1.0, float(np.abs(want).max()))


def _q_dq(x: str, out: str, scale: float, suffix: str) -> tuple[list, list]:
    nodes = [
        helper.make_node("QuantizeLinear", [x, f"s{suffix}", f"z{suffix}"], [f"q{suffix}"]),
        helper.make_node("DequantizeLinear", [f"q{suffix}", f"s{suffix}", f"z{suffix}"], [out]),
    ]
    params = [
        numpy_helper.from_array(np.array(scale, np.float32), f"s{suffix}"),
        numpy_helper.from_array(np.array(0, np.uint16), f"z{suffix}"),
    ]
    return nodes, params


@pytest.mark.parametrize(("second_scale", "kept"), [(0.01, 3), (0.02, 5)])
def test_repeated_quantization_folds_only_when_equal(second_scale, kept, tmp_path):
    """A boundary Q/DQ/Q/DQ with equal parameters folds to one pair; with other parameters the
    second pair is a real requantization and stays."""
    first, first_params = _q_dq("x", "a", 0.01, "1")
    second, second_params = _q_dq("a", "b", second_scale, "2")
    graph = helper.make_graph(
        [*first, *second, helper.make_node("Relu", ["b"], ["y"])],
        "boundary",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
        first_params + second_params,
    )
    merge_repeated_qdq(graph)
    assert len(graph.node) == kept
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    onnx.checker.check_model(model)
    onnx.save(model, str(tmp_path / "boundary.onnx"))
    x = np.array([0.5, -0.25, 3.0, 0.013], np.float32)
    (y,) = exact_session(tmp_path / "boundary.onnx").run(None, {"x": x})  # onnxruntime's optimizer folds QDQ itself
    quantized = np.clip(np.round(x / 0.01), 0, 65535) * 0.01
    if second_scale != 0.01:
        quantized = np.clip(np.round(quantized / second_scale), 0, 65535) * second_scale
    assert np.allclose(y, np.maximum(quantized, 0), atol=1e-6)
