"""Every bundled recipe, on a miniature of the model it describes: it builds for each of its targets, its fp32 export
computes what torch computes, and the packages carry the family's chat format.

A recipe that records no structure or chat format has no miniature, and fails here."""

import json

import numpy as np
import pytest
from transformers import AutoTokenizer

from phiexport.chat_formats import chat_format
from phiexport.evaluate.onnx_runner import PackageRunner
from phiexport.evaluate.reference import TorchReference
from phiexport.export.static_graphs import StaticLayout, export_static_graphs
from phiexport.pipeline import build
from phiexport.recipe import bundled_recipes, load_recipe
from phiexport.runtime.static_pipeline import StaticPipeline
from tests.miniatures import VOCAB, make_recipe_miniature, on_miniature

RECIPES = bundled_recipes()


@pytest.fixture(scope="module")
def miniatures(tmp_path_factory):
    made = {}

    def miniature(name):
        if name not in made:
            made[name] = make_recipe_miniature(load_recipe(name), tmp_path_factory.mktemp(f"mini-{name}"))
        return made[name]

    return miniature


def test_every_recipe_records_what_its_miniature_needs():
    missing = [name for name in RECIPES if load_recipe(name).structure is None or load_recipe(name).chat.format is None]
    assert not missing, f"recipes without structure or chat format, so without a miniature: {missing}"


@pytest.mark.slow
@pytest.mark.parametrize("name", RECIPES)
def test_recipe_fp32_export_matches_torch_on_its_miniature(name, miniatures, tmp_path):
    model_dir = miniatures(name)
    recipe = on_miniature(load_recipe(name), model_dir, quick=True, targets=["cpu"], quantization={"precision": "fp32"})
    package = build(recipe, tmp_path / "fp32").packages["cpu"]
    # past the original context of a LongRoPE miniature (64), so its long factors are in use too
    token_ids = np.random.default_rng(0).integers(10, VOCAB, size=150).tolist()
    reference = TorchReference(model_dir)
    error = np.abs(PackageRunner(package).logits(token_ids) - reference.logits(token_ids)).max()
    assert error < 1e-4

    # the NPU's static graphs in fp32: prefill chunks and 1-token decode steps over a fixed cache
    layout = StaticLayout.from_config(json.loads((model_dir / "config.json").read_text()), context=128, chunk=32)
    pipeline = StaticPipeline.from_graphs(export_static_graphs(reference.model, layout, tmp_path / "static"), layout)
    short = token_ids[:50]  # within a LongRoPE miniature's original context, where the NPU's factors apply
    steps = [pipeline.logits(short[:40])] + [pipeline.logits([token]) for token in short[40:]]
    assert np.abs(np.concatenate(steps) - reference.logits(short)).max() < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("name", RECIPES)
def test_recipe_builds_every_target_on_its_miniature(name, miniatures, tmp_path):
    recipe = load_recipe(name)
    assert set(recipe.targets) == {"cpu", "dml", "npu"} or name == "smollm2-135m-instruct"
    model_dir = miniatures(name)
    result = build(on_miniature(recipe, model_dir, quick=True, targets=["cpu", "dml", "npu"]), tmp_path / "out")

    fmt = chat_format(recipe.chat.format)
    for target, package in result.packages.items():
        report = json.loads((package / "report.json").read_text())
        assert json.loads((package / "manifest.json").read_text())["target"]["name"] == target
        # random-weight miniatures, int4 with the recipe's method: every cell measured ≤ 0.03
        assert report["metrics"]["kl_mean"] < 0.06, target
        # the miniature is this recipe's model, made smaller: identity checked, sizes reported
        assert report["structure"]["differs"]["layers"] == 2
        stops = json.loads((package / "genai_config.json").read_text())["model"]["eos_token_id"]
        assert set(report["chat"]["stop_token_ids"]) <= set(stops)
        assert len(report["chat"]["stop_token_ids"]) >= len(fmt.stop_tokens)
        tokenizer = AutoTokenizer.from_pretrained(package)
        turn = [{"role": "user", "content": "2+2?"}]
        prompt = tokenizer.apply_chat_template(turn, tokenize=False, add_generation_prompt=True)
        assert prompt == tokenizer.apply_chat_template(
            turn, chat_template=fmt.template, tokenize=False, add_generation_prompt=True
        )
        assert "2+2?" in prompt and any(token in prompt for token in fmt.special_tokens)
    dml = json.loads((result.packages["dml"] / "report.json").read_text())
    assert dml["operators"]["provider"] == "DirectML" and dml["operators"]["checked_nodes"] > 10
    assert "CPU execution provider" in dml["evaluated_on"]
