"""The embedded SmolLM2 GGUF's quantized tensors, read as codes, scales and mins, are the weights transformers reads
from it: every layer's Q4_1 linears and the Q8_0 tied embedding (the LM head too), Llama's permuted q/k rows put
back in order; `--requantize` rounds the dequantized file again instead."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from phiexport.source.gguf import gguf_linears
from tests.conftest import run_cli

pytestmark = pytest.mark.slow


def test_smollm2_gguf_tensors_map_exactly_onto_transformers_weights(smollm2_gguf, smollm2_checkpoint):
    weights, formats = gguf_linears(smollm2_gguf)
    assert set(formats.values()) == {"Q4_1", "Q8_0"}
    assert set(weights) == set(formats)  # both formats map exactly
    assert formats["model.embed_tokens"] == formats["lm_head"] == "Q8_0"
    assert weights["lm_head"] is weights["model.embed_tokens"]  # tied: one tensor in the file
    assert sum(name.endswith("q_proj") for name in weights) == 30
    # transformers' own dequantization of the file, as the session cache holds it
    model = AutoModelForCausalLM.from_pretrained(smollm2_checkpoint.path, dtype=torch.float32)
    state = model.state_dict()
    for name, weight in weights.items():
        expected = state[f"{name}.weight"].numpy()
        found = weight.dequantize()
        assert found.shape == expected.shape, name
        assert np.abs(found - expected).max() <= 1e-6 * np.abs(expected).max(), name


def test_requantize_rounds_the_dequantized_gguf_again(smollm2_gguf, smollm2_checkpoint, tmp_path):
    """`phiexport build model.gguf --requantize`: the old path, the builder's own int4 of the dequantized weights
    (measured on these 4 sequences: KL 0.40, top-1 78.6 %, the loss the import avoids). The gates let it publish at up
    to 2 × that loss."""
    output = tmp_path / "requantized"
    gates = ("--max-kl", "0.8", "--min-top1", "0.6", "--max-ppl-ratio", "2")
    args = ("build", str(smollm2_gguf), "-t", "cpu", "--requantize", "--quant", "rtn", "--eval-sequences", "4")
    result = run_cli(*args, *gates, "-o", str(output), "--json", timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    manifest = json.loads((output / "cpu" / "manifest.json").read_text())
    assert "imported" not in manifest["weights"] and manifest["weights"]["method"] == "rtn"
    assert manifest["recipe"]["quantization"]["requantize"] is True
    assert json.loads(result.stdout)["metrics"]["cpu"]["kl_mean"] > 0.2


def test_the_export_line_names_the_imported_formats(smollm2_gguf, smollm2_checkpoint):
    """The build's stage line says what happened to the weights: the GGUF's own Q4_1 linears and Q8_0 tied LM head,
    read here from the file's tensor types, not GPTQ or RTN."""
    from gguf import GGUFReader

    from phiexport.quantize.source_integers import source_integers
    from phiexport.recipe import QuantizationConfig

    kinds = {tensor.tensor_type.name for tensor in GGUFReader(smollm2_gguf).tensors if len(tensor.shape) == 2}
    assert kinds == {"Q4_1", "Q8_0"}
    integers = source_integers(smollm2_checkpoint, QuantizationConfig(method="gptq"))
    assert integers is not None and integers.complete
    assert integers.describe(1, "unused") == "the GGUF's own integers (Q4_1, Q8_0), fp32 compute (exact)"
    assert integers.describe(4, "unused") == "the GGUF's own integers (Q4_1, Q8_0), int8-activation compute"
    integers.weights.pop("lm_head")  # a linear without integers is re-quantized as the recipe says
    assert integers.describe(1, "int4 rtn block 32 sym").endswith(
        "fp32 compute (exact); the rest int4 rtn block 32 sym"
    )
