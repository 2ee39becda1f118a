"""The layer-streamed reference computes what the whole fp32 model computes, and a build checked with it reports the
same numbers."""

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import phiexport.evaluate.reference as reference_module
from phiexport.evaluate.data import ScoredSequence
from phiexport.evaluate.reference import TorchReference, open_reference
from phiexport.evaluate.streamed_reference import StreamedReference
from phiexport.pipeline import build
from phiexport.recipe import recipe_for_source
from tests.miniatures import MINIATURES, VOCAB


def sequences(seed: int, lengths: tuple[int, ...]) -> list[ScoredSequence]:
    rng = np.random.default_rng(seed)
    return [ScoredSequence(rng.integers(10, VOCAB, n).tolist(), n // 3) for n in lengths]


@pytest.mark.parametrize("model_type", sorted(MINIATURES))
def test_streamed_logits_and_greedy_text_match_the_whole_model(model_type, miniature_dirs):
    model_dir = miniature_dirs[model_type]
    whole, streamed = TorchReference(model_dir), StreamedReference(model_dir)
    scored = sequences(0, (40, 150, 300))  # the Phi-4 miniature passes its original context (64): long factors
    for expected, actual in zip(whole.scored_logits(scored), streamed.scored_logits(scored), strict=True):
        assert actual.shape == expected.shape
        assert np.abs(actual - expected).max() < 1e-5

    prompts = [s.token_ids[:20] for s in sequences(1, (30, 30, 30))]
    greedy = whole.greedy_many(prompts, 24, set(), lambda *_: [])

    def right_draft(prefix: list[int], new_tokens: int) -> list[int]:
        return whole.greedy(prefix, new_tokens, set())

    assert streamed.greedy_many(prompts, 24, set(), lambda _prefix, n: [7] * n) == greedy
    assert streamed.greedy_many(prompts, 24, set(), right_draft) == greedy
    eos = {greedy[0][5]}
    stopped = whole.greedy_many(prompts[:1], 24, eos, right_draft)
    assert stopped[0] == greedy[0][: greedy[0].index(greedy[0][5]) + 1]
    assert streamed.greedy_many(prompts[:1], 24, eos, right_draft) == stopped


def test_a_bf16_checkpoint_reads_as_transformers_reads_it(mini_phi4, tmp_path):
    model_dir = tmp_path / "bf16"
    shutil.copytree(mini_phi4, model_dir)
    weights = model_dir / "model.safetensors"
    save_file({name: t.to(torch.bfloat16) for name, t in load_file(weights).items()}, weights, {"format": "pt"})
    scored = sequences(2, (90,))
    (expected,) = TorchReference(model_dir).scored_logits(scored)
    (actual,) = StreamedReference(model_dir).scored_logits(scored)
    assert np.abs(actual - expected).max() < 1e-5


def test_open_reference_streams_a_model_above_the_in_memory_size(mini_phi4, monkeypatch):
    assert isinstance(open_reference(mini_phi4), TorchReference)
    monkeypatch.setattr(reference_module, "IN_MEMORY_BYTES", 1 << 20)
    assert isinstance(open_reference(mini_phi4), StreamedReference)
    assert isinstance(open_reference(mini_phi4, trust_remote_code=True), TorchReference)


def test_a_build_checked_against_the_streamed_reference_reports_the_same_numbers(mini_phi4, tmp_path, monkeypatch):
    recipe = recipe_for_source(str(mini_phi4)).with_overrides(
        {"evaluation": {"sequences": 6, "greedy_prompts": 2, "greedy_tokens": 12}}
    )
    whole = json.loads((build(recipe, tmp_path / "whole").packages["cpu"] / "report.json").read_text())
    monkeypatch.setattr(reference_module, "IN_MEMORY_BYTES", 0)
    streamed = json.loads((build(recipe, tmp_path / "streamed").packages["cpu"] / "report.json").read_text())
    for metric, value in whole["metrics"].items():
        assert streamed["metrics"][metric] == pytest.approx(value, rel=1e-4, abs=1e-7), metric
    assert streamed["greedy"] == whole["greedy"]
    assert whole["metrics"]["kl_mean"] > 0  # an int4 package: there is a difference to measure
