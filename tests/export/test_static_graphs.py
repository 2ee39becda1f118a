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


def test_long_rope_positions_use_long_factors(phi_pipeline: tuple[torch.nn.Module, StaticPipeline]) -> None:
    """Past original_max_position_embeddings (64) each position keeps its long-factor rotation: the pipeline matches
    torch run with the same per-position tables over 2 prefill chunks and 20 decode steps, and the tables do differ
    from the short factors there (a runtime that drops the long factors would fail)."""
    model, pipeline = phi_pipeline
    tables = rotary_tables(model, CONTEXT)
    cos = tables[0]
    short = _short_table(model, 100)
    assert torch.allclose(cos[:64], short[:64], atol=1e-6)
    assert (cos[64:100] - short[64:]).abs().max() > 0.1

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


def _short_table(model: torch.nn.Module, positions: int) -> torch.Tensor:
    """cos with the short factors at every position (what a runtime dropping the long factors would use)."""
    rotary = model.model.rotary_emb
    freqs = torch.arange(positions)[:, None].float() * rotary.original_inv_freq[None, :]
    return torch.cat([freqs, freqs], dim=-1).cos() * rotary.attention_scaling


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
