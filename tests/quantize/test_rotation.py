import json
from pathlib import Path

import numpy as np
import pytest

from phiexport.quantize.prepare import prepare_checkpoint
from phiexport.recipe import parse_recipe
from phiexport.source import resolve_source
from tests.miniatures import MINIATURES


def logits(model_dir: Path, token_ids: list[int]) -> np.ndarray:
    from phiexport.evaluate.reference import TorchReference

    return TorchReference(model_dir).logits(token_ids)


def rotate(model: str, tmp_path: Path, seed: int = 0):
    recipe = parse_recipe(
        {
            "version": 1,
            "name": "r",
            "source": {"model": model},
            "quantization": {"rotate": True, "rotation_seed": seed},
        },
        origin="test",
    )
    checkpoint = resolve_source(recipe.source, tmp_path / "cache")
    rotated, calibrated = prepare_checkpoint(checkpoint, tmp_path / "rotated", recipe)
    assert calibrated is None
    return checkpoint, rotated


@pytest.mark.parametrize("model_type", sorted(MINIATURES))
def test_rotated_miniature_computes_the_same_logits(model_type, miniature_dirs, tmp_path):
    original, rotated = rotate(str(miniature_dirs[model_type]), tmp_path)
    # past the Phi miniature's original context (64), so LongRoPE's long factors and partial rotary are exercised
    token_ids = np.random.default_rng(3).integers(10, 2000, size=150).tolist()
    np.testing.assert_allclose(logits(rotated.path, token_ids), logits(original.path, token_ids), atol=1e-4)
    assert rotated.config["tie_word_embeddings"] is False  # the LM head absorbed the final norm scale
    assert rotated.files == original.files  # the manifest still names the source checkpoint


def test_rotation_changes_the_weights_and_resets_the_norms(mini_phi4, tmp_path):
    from safetensors.numpy import load_file

    original, rotated = rotate(str(mini_phi4), tmp_path)
    before, after = load_file(original.path / "model.safetensors"), load_file(rotated.path / "model.safetensors")
    name = "model.layers.0.mlp.down_proj.weight"
    assert np.abs(before[name] - after[name]).max() > 1e-2
    assert np.all(after["model.layers.1.input_layernorm.weight"] == 1.0)
    assert np.all(after["model.norm.weight"] == 1.0)
    assert "lm_head.weight" in after


@pytest.mark.slow
def test_rotated_smollm2_is_exact(smollm2_checkpoint, monkeypatch):
    """fp32 cannot show it: the rotated model's fp32 logits differ by up to 1.5e-4 on SmolLM2's logit scale (~40),
    the size of fp32's own error there (the unrotated model in fp32 against fp64: up to 1.2e-4). In fp64 stock
    transformers still computes RMSNorm in fp32 (1.5e-5 apart); with the norm in fp64 the two agree to ~1e-13."""
    import copy

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.models.llama import modeling_llama

    from phiexport.quantize.rotation import rotate_decoder

    checkpoint = smollm2_checkpoint
    tokenizer = AutoTokenizer.from_pretrained(checkpoint.path)
    problem = json.loads((Path(__file__).parents[2] / "evaluation" / "gsm8k_test.jsonl").open().readline())
    token_ids = torch.tensor([tokenizer(problem["question"] + " " + problem["answer"])["input_ids"]])

    def largest_difference() -> float:
        original = AutoModelForCausalLM.from_pretrained(checkpoint.path, dtype=torch.float64).eval()
        rotated = copy.deepcopy(original)
        rotate_decoder(rotated, seed=0)
        with torch.inference_mode():
            expected, actual = original(token_ids).logits, rotated(token_ids).logits
        assert float(expected.abs().max()) > 10
        return float((actual - expected).abs().max())

    assert largest_difference() < 1e-4

    def norm_in_input_dtype(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))

    monkeypatch.setattr(modeling_llama.LlamaRMSNorm, "forward", norm_in_input_dtype)
    assert largest_difference() < 1e-9
