"""The NPU package's CPU graphs, written a block of vocabulary rows at a time, hold the bytes onnxruntime's
quantizers give the whole matrices, and compute the embedding rows and logits of the (rotated) model."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, DefaultWeightOnlyQuantizer
from transformers import AutoModelForCausalLM

import phiexport.export.vocab_graphs as vocab_graphs
from phiexport.export.static_graphs import StaticLayout, rotary_tables
from phiexport.quantize.rotation import rotate_decoder
from phiexport.runtime.static_pipeline import cpu_session
from phiexport.source.layered import LayeredModel


@pytest.mark.parametrize("rotated", [False, True])
def test_chunked_vocabulary_graphs_match_whole_matrix_quantization(mini_phi4, tmp_path, monkeypatch, rotated):
    monkeypatch.setattr(vocab_graphs, "ROWS_PER_CHUNK", 7)  # odd: chunks end mid-way through no block, never evenly
    source = LayeredModel(mini_phi4, rotation_seed=3 if rotated else None)
    layout = StaticLayout.from_config(json.loads((mini_phi4 / "config.json").read_text()), context=128, chunk=16)
    cos, sin = (table.numpy() for table in rotary_tables(source.model, layout.context))
    paths = vocab_graphs.write_vocab_graphs(source, layout, cos, sin, tmp_path, lm_head_bits=8)

    model = AutoModelForCausalLM.from_pretrained(mini_phi4, dtype=torch.float32).eval()
    if rotated:
        rotate_decoder(model, seed=3)
    embedding = model.model.embed_tokens.weight.detach().numpy()
    lm_head = model.lm_head.weight.detach().numpy()

    def initializers(path):
        return {t.name: numpy_helper.to_array(t, str(tmp_path)) for t in onnx.load(str(path)).graph.initializer}

    codes, scales, _ = DefaultWeightOnlyQuantizer.quantize_ndarray(embedding, 1, 32, True)
    stored_embeddings = initializers(paths["embeddings"])
    assert np.array_equal(stored_embeddings["embed_tokens.weight_Q4"].reshape(-1), _int4_values(codes))
    assert np.array_equal(stored_embeddings["embed_tokens.weight_scales"], scales)
    kernel = DefaultWeightOnlyQuantizer(DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=True, bits=8))
    packed, head_scales, _ = kernel.qbits_block_quant(np.ascontiguousarray(lm_head.T))
    stored_head = initializers(paths["lm_head"])
    assert np.array_equal(stored_head["lm_head.weight_Q"], packed)
    assert np.array_equal(stored_head["lm_head.weight_scales"], head_scales)

    ids = np.array([[1, 5, 900, 77]], dtype=np.int64)
    positions = np.array([[0, 1, 2, 100]], dtype=np.int64)
    hidden, got_cos, _ = cpu_session(paths["embeddings"]).run(None, {"input_ids": ids, "position_ids": positions})
    # Each value within half a step of its own block's scale, except that onnxruntime puts a block's absmax on code
    # −8, so a value of the other sign past 7.5 steps is clipped to 7, up to one step away.
    rows = embedding[ids[0]]
    block_scales = np.repeat(stored_embeddings["embed_tokens.weight_scales"][ids[0]], 32, axis=1)
    allowed = (np.where(rows / block_scales > 7.5, 1.0, 0.5) + 1e-5) * np.abs(block_scales)
    error = np.abs(hidden[0] - rows)
    assert np.all(error <= allowed), f"embedding error up to {np.max(error / np.abs(block_scales)):.3f} of a step"
    assert np.array_equal(got_cos[0, 0], cos[positions[0]])
    states = np.random.default_rng(0).standard_normal((1, 4, layout.hidden)).astype(np.float32)
    (logits,) = cpu_session(paths["lm_head"]).run(None, {"hidden_out": states})
    with torch.no_grad():
        normed = model.model.norm(torch.from_numpy(states))[0].numpy()
    expected = normed @ lm_head.T
    # Per logit: the weights' int8 rounding (the stored block scales) and, at accuracy_level 4, the activations'
    # (absmax / 127 per block of 32) are independent errors uniform within half a step: 6 of their σ at most.
    weight_steps = np.repeat(stored_head["lm_head.weight_scales"], 32, axis=1)
    activation_steps = np.repeat(np.abs(normed).reshape(len(normed), -1, 32).max(axis=-1) / 127, 32, axis=1)
    sigma = np.sqrt((normed**2 @ (weight_steps**2).T + activation_steps**2 @ (lm_head**2).T) / 12)
    error = np.abs(logits[0] - expected)
    assert np.all(error <= 6 * sigma + 1e-6), f"logit error up to {np.max(error / (sigma + 1e-9)):.1f} σ"


def _int4_values(packed: np.ndarray) -> np.ndarray:
    """Signed int4 values from onnxruntime's packing (low nibble first)."""
    nibbles = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(-1).astype(np.int8)
    return np.where(nibbles > 7, nibbles - 16, nibbles)
