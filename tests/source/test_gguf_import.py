"""The embedded SmolLM2 GGUF's quantized tensors, read as codes, scales and mins, are the weights transformers reads
from it: every layer's Q4_1 linears and the Q8_0 tied embedding (the LM head too), Llama's permuted q/k rows put
back in order."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from phiexport.source.gguf import gguf_linears

pytestmark = pytest.mark.slow


def test_smollm2_gguf_tensors_map_exactly_onto_transformers_weights(smollm2_gguf):
    weights, formats = gguf_linears(smollm2_gguf)
    assert set(formats.values()) == {"Q4_1", "Q8_0"}
    assert set(weights) == set(formats)  # both formats map exactly
    assert formats["model.embed_tokens"] == formats["lm_head"] == "Q8_0"
    assert weights["lm_head"] is weights["model.embed_tokens"]  # tied: one tensor in the file
    assert sum(name.endswith("q_proj") for name in weights) == 30
    model = AutoModelForCausalLM.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name, dtype=torch.float32)
    state = model.state_dict()
    for name, weight in weights.items():
        expected = state[f"{name}.weight"].numpy()
        found = weight.dequantize()
        assert found.shape == expected.shape, name
        assert np.abs(found - expected).max() <= 1e-6 * np.abs(expected).max(), name
