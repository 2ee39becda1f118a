"""The fp32 static-shape NPU pipeline (prefill chunks + 1-token decode over a fixed cache) against torch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from phiexport.errors import BuildError
from phiexport.export.static_graphs import StaticLayout, export_static_graphs, rotary_tables
from phiexport.quantize.rotation import rotate_decoder
from phiexport.runtime.static_pipeline import StaticPipeline
from tests.miniatures import MINIATURES

CONTEXT, CHUNK = 256, 64


def _load(checkpoint: Path) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()


def _pipeline(model: torch.nn.Module, checkpoint: Path, directory: Path) -> StaticPipeline:
    layout = StaticLayout.from_config(
        json.loads((checkpoint / "config.json").read_text()), context=CONTEXT, chunk=CHUNK
    )
    return StaticPipeline.from_graphs(export_static_graphs(model, layout, directory), layout)


def _incremental_logits(pipeline: StaticPipeline, ids: list[int], prompt: int) -> np.ndarray:
    """The prompt through prefill chunks (the last one padded), then one decode step per remaining token."""
    pipeline.reset()
    return np.concatenate([pipeline.logits(ids[:prompt])] + [pipeline.logits([token]) for token in ids[prompt:]])


def _torch_logits(model: torch.nn.Module, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


@pytest.fixture(scope="module")
def phi_pipeline(mini_phi4: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, StaticPipeline]:
    model = _load(mini_phi4)
    return model, _pipeline(model, mini_phi4, tmp_path_factory.mktemp("static-phi"))


@pytest.mark.parametrize("architecture", sorted(MINIATURES))
def test_fp32_pipeline_matches_torch(architecture: str, miniature_dirs: dict[str, Path], tmp_path: Path) -> None:
    """50 tokens stay below every miniature's original context, so plain transformers is the reference."""
    checkpoint = miniature_dirs[architecture]
    model = _load(checkpoint)
    pipeline = _pipeline(model, checkpoint, tmp_path)
    ids = np.random.default_rng(1).integers(0, 2000, 50).tolist()
    error = np.abs(_incremental_logits(pipeline, ids, prompt=40) - _torch_logits(model, ids)).max()
    assert error < 1e-4, f"{architecture}: max logit error {error:.2e}"


def test_long_rope_positions_use_long_factors(
    phi_pipeline: tuple[torch.nn.Module, StaticPipeline], mini_phi4: Path
) -> None:
    """Positions below original_max_position_embeddings (64) get transformers' own rotation of a 64-token sequence
    (short factors), later ones that of a longer sequence (long factors, which transformers gives every position once
    the sequence passes 64); position 64 also by hand from config.json. With these tables the pipeline matches torch
    over 2 prefill chunks and 20 decode steps past the original context."""
    model, pipeline = phi_pipeline
    config = json.loads((mini_phi4 / "config.json").read_text())
    original = config["original_max_position_embeddings"]
    tables = rotary_tables(model, CONTEXT)
    probe = torch.zeros(1)
    short = model.model.rotary_emb(probe, torch.arange(original)[None, :])
    long = model.model.rotary_emb(probe, torch.arange(CONTEXT)[None, :])
    for table, short_table, long_table in zip(tables, short, long, strict=True):
        assert torch.equal(table[:original], short_table[0]), f"positions below {original}: not the short table"
        assert torch.equal(table[original:], long_table[0, original:]), f"positions from {original}: not the long table"
    assert (long[0][0, original - 1] - short[0][0, original - 1]).abs().max() > 0.1  # a shifted switch shows

    # inv_freq_i = 1 / (long_factor_i · θ^(2i/R)), scaled by sqrt(1 + ln(2048/64) / ln 64) = sqrt(11/6)
    rotary_dim = int(config["head_dim"] * config["partial_rotary_factor"])
    exponents = np.arange(0, rotary_dim, 2) / rotary_dim
    inv_freq = 1 / (np.array(config["rope_scaling"]["long_factor"]) * config["rope_theta"] ** exponents)
    scaling = np.sqrt(1 + np.log(config["max_position_embeddings"] / original) / np.log(original))
    angles = np.tile(original * inv_freq, 2)
    assert np.allclose(tables[0][original].numpy(), np.cos(angles) * scaling, atol=1e-5)
    assert np.allclose(tables[1][original].numpy(), np.sin(angles) * scaling, atol=1e-5)

    ids = np.random.default_rng(2).integers(0, 2000, 150).tolist()
    got = _incremental_logits(pipeline, ids, prompt=130)
    original_forward = model.model.rotary_emb.forward
    model.model.rotary_emb.forward = lambda x, position_ids: tuple(table[position_ids] for table in tables)
    try:
        expected = _torch_logits(model, ids)
    finally:
        model.model.rotary_emb.forward = original_forward
    error = np.abs(got - expected).max()
    assert error < 1e-4, f"max logit error {error:.2e} past the original context"


def test_prompts_of_any_length(phi_pipeline: tuple[torch.nn.Module, StaticPipeline]) -> None:
    """One token, a prompt shorter than the chunk, exactly one chunk: all match torch (pad rows never leak)."""
    model, pipeline = phi_pipeline
    for length in (1, 5, CHUNK):
        ids = np.random.default_rng(length).integers(0, 2000, length).tolist()
        pipeline.reset()
        error = np.abs(pipeline.logits(ids) - _torch_logits(model, ids)).max()
        assert error < 1e-4, f"{length} tokens: max logit error {error:.2e}"
        assert pipeline.filled == length


def test_context_overflow_is_refused(phi_pipeline: tuple[torch.nn.Module, StaticPipeline]) -> None:
    _, pipeline = phi_pipeline
    pipeline.reset()
    with pytest.raises(BuildError, match="exceeds the package's context of 256"):
        pipeline.logits([1] * (CONTEXT + 1))


def test_rotated_fp32_pipeline_keeps_logits(mini_phi4: Path, tmp_path: Path) -> None:
    """The Hadamard rotation folded into the weights (tied embeddings untied, partial rotary) leaves the fp32 static
    pipeline's logits equal to the unrotated model's within 1e-4."""
    reference = _load(mini_phi4)
    rotated = _load(mini_phi4)
    rotate_decoder(rotated, seed=0)
    pipeline = _pipeline(rotated, mini_phi4, tmp_path)
    ids = np.random.default_rng(3).integers(0, 2000, 60).tolist()
    error = np.abs(_incremental_logits(pipeline, ids, prompt=50) - _torch_logits(reference, ids)).max()
    assert error < 1e-4, f"max logit error {error:.2e}"
