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
    embeddings = cpu_session(paths["embeddings"])
    hidden, got_cos, *_ = embeddings.run(None, {"input_ids": ids, **lengths(102)})  # positions 99 … 102
    # Each value within half a step of its own block's scale, except that onnxruntime puts a block's absmax on code
    # −8, so a value of the other sign past 7.5 steps is clipped to 7, up to one step away.
    rows = embedding[ids[0]]
    block_scales = np.repeat(stored_embeddings["embed_tokens.weight_scales"][ids[0]], 32, axis=1)
    allowed = (np.where(rows / block_scales > 7.5, 1.0, 0.5) + 1e-5) * np.abs(block_scales)
    error = np.abs(hidden[0] - rows)
    assert np.all(error <= allowed), f"embedding error up to {np.max(error / np.abs(block_scales)):.3f} of a step"
    assert np.array_equal(got_cos[0, 0], cos[99:103])
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


def lengths(past_seq_len: int, total: int = 128) -> dict[str, np.ndarray]:
    """The sequence lengths onnxruntime-genai feeds a pipeline stage."""
    return {
        "past_seq_len": np.array([[past_seq_len]], dtype=np.int32),
        "total_seq_len": np.array([total], dtype=np.int32),
    }


@pytest.mark.parametrize(("past_seq_len", "steps", "first"), [(102, 4, 99), (0, 1, 0), (129, 4, 126)])
def test_embeddings_derive_each_steps_positions_mask_and_cache_write(mini_phi4, tmp_path, past_seq_len, steps, first):
    """A step of `steps` tokens fed `past_seq_len` (og's: the tokens cached after it, minus one) holds positions
    first … first + steps − 1; rows past the 128-slot cache (the last case: pad rows of a final chunk) write nothing
    and read the last table row."""
    source = LayeredModel(mini_phi4)
    layout = StaticLayout.from_config(json.loads((mini_phi4 / "config.json").read_text()), context=128, chunk=16)
    cos, sin = (table.numpy() for table in rotary_tables(source.model, layout.context))
    paths = vocab_graphs.write_vocab_graphs(source, layout, cos, sin, tmp_path, lm_head_bits=8)
    ids = np.full((1, steps), 7, dtype=np.int64)
    _, got_cos, got_sin, mask, write, keep = cpu_session(paths["embeddings"]).run(
        None, {"input_ids": ids, **lengths(past_seq_len)}
    )
    expected_mask = np.full((steps, 128), -1.0e4, dtype=np.float32)
    expected_write = np.zeros((128, steps), dtype=np.float32)
    for row in range(steps):
        position = first + row
        expected_mask[row, : position + 1] = 0.0
        if position < 128:
            expected_write[position, row] = 1.0
    rows = [min(first + row, 127) for row in range(steps)]
    assert np.array_equal(got_cos[0, 0], cos[rows]) and np.array_equal(got_sin[0, 0], sin[rows])
    assert np.array_equal(mask[0, 0], expected_mask)
    assert np.array_equal(write[0, 0], expected_write)
    assert np.array_equal(keep[0, 0, :, 0], 1.0 - expected_write.max(axis=1))
    shapes = [(1, 1, steps, layout.rotary_dim)] * 2 + [(1, 1, steps, 128), (1, 1, 128, steps), (1, 1, 128, 1)]
    assert [got_cos.shape, got_sin.shape, mask.shape, write.shape, keep.shape] == shapes


def _int4_values(packed: np.ndarray) -> np.ndarray:
    """Signed int4 values from onnxruntime's packing (low nibble first)."""
    nibbles = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(-1).astype(np.int8)
    return np.where(nibbles > 7, nibbles - 16, nibbles)
