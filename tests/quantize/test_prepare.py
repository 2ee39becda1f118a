"""The prepared checkpoint written a decoder layer at a time holds what the whole model, rotated and GPTQ-quantized
in memory, would have saved."""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from phiexport.quantize.calibrated import calibrate_weights
from phiexport.quantize.prepare import calibration_text, load_float_model, write_prepared_layers
from phiexport.quantize.rotation import rotate_decoder
from phiexport.recipe import parse_recipe
from phiexport.source import resolve_source


@pytest.mark.parametrize(("model_type", "method"), [("phi3", "gptq"), ("qwen2", "awq"), ("llama", "rtn")])
def test_layer_by_layer_preparation_matches_the_whole_model(model_type, method, miniature_dirs, tmp_path):
    recipe = parse_recipe(
        {
            "version": 1,
            "name": "p",
            "source": {"model": str(miniature_dirs[model_type])},
            "quantization": {"method": method, "rotate": True, "rotation_seed": 2},
            "calibration": {"sequences": 4},
        },
        origin="test",
    )
    checkpoint = resolve_source(recipe.source, tmp_path / "cache")
    prepared, calibrated = write_prepared_layers(checkpoint, tmp_path / "prepared", recipe)

    model = load_float_model(checkpoint, trust_remote_code=False)
    rotate_decoder(model, seed=2)
    expected = {name: tensor.detach() for name, tensor in model.state_dict().items()}
    if recipe.quantization.calibrated:
        whole = calibrate_weights(model, calibration_text(checkpoint, recipe), recipe.quantization)
        expected = {name: tensor.detach() for name, tensor in model.state_dict().items()}
        assert calibrated is not None and set(calibrated.weights) == set(whole.weights)
        for name, weight in whole.weights.items():
            assert torch.equal(calibrated.weights[name].codes, weight.codes), name
    else:
        assert calibrated is None
    written = load_file(prepared.path / "model.safetensors")
    assert set(written) == set(expected)
    for name, tensor in expected.items():
        assert np.abs(written[name].numpy() - tensor.numpy()).max() <= 1e-6 * max(1.0, float(tensor.abs().max())), name
    assert prepared.config["tie_word_embeddings"] is False
