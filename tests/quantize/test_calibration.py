"""The per-layer calibration samples are what the whole fp32 pipeline feeds each layer."""

from __future__ import annotations

import json

import numpy as np
import torch
from transformers import AutoModelForCausalLM

from phiexport.export.static_graphs import StaticLayout, export_layer_graphs, export_static_graphs, rotary_tables
from phiexport.quantize.calibration import LayerCalibration
from phiexport.runtime.static_pipeline import StaticPipeline, exact_session


def test_layer_by_layer_samples_reach_the_whole_pipelines_hidden_states(mini_phi4, tmp_path):
    """After every layer has run, each prefill sample's rows and each decode sample's row are the final hidden states
    the whole fp32 pipeline computes for those tokens (prompts of 1, 40 and 75 tokens: chunks padded, a 1-token
    conversation, decode points at several cache fills)."""
    model = AutoModelForCausalLM.from_pretrained(mini_phi4, dtype=torch.float32).eval()
    layout = StaticLayout.from_config(json.loads((mini_phi4 / "config.json").read_text()), context=128, chunk=32)
    cos, sin = (table.numpy() for table in rotary_tables(model, layout.context))
    rng = np.random.default_rng(0)
    sequences = [rng.integers(0, 2000, n).tolist() for n in (40, 1, 75)]
    embedding = model.model.embed_tokens.weight.detach().numpy()
    calibration = LayerCalibration(
        layout, sequences, decode_samples=3, seed=1, cos=cos, sin=sin, embed=lambda ids: embedding[ids]
    )
    for index, layer in enumerate(model.model.layers):
        graphs = export_layer_graphs(layer, layout, tmp_path / f"layer{index}")
        calibration.run_layer({kind: exact_session(path) for kind, path in graphs.items()})
        calibration.advance()

    whole = StaticPipeline.from_graphs(export_static_graphs(model, layout, tmp_path / "whole"), layout)
    for call in calibration.calls["prefill"]:
        ids = sequences[call.sequence]
        whole.reset()
        expected = whole.hidden_states(ids[: call.start + call.real])[call.start :]
        found = calibration.rows["prefill"][call.sequence][call.start : call.start + call.real]
        assert np.abs(found - expected).max() < 1e-4
    fills = sorted({call.start for call in calibration.calls["decode"]})
    assert len(fills) > 2 and 0 in fills
    for call in calibration.calls["decode"]:
        ids = sequences[call.sequence]
        whole.reset()
        if call.start:
            whole.hidden_states(ids[: call.start])
        expected = whole.hidden_states([ids[call.start]])
        assert np.abs(calibration.rows["decode"][call.sequence][call.row] - expected[0]).max() < 1e-4
