"""A checkpoint is checked against the structure its recipe records: another model is refused, a smaller one noted."""

import copy

import pytest

from phiexport.architectures.structure import compare_structure, read_structure
from phiexport.errors import SourceError
from phiexport.recipe import load_recipe
from tests.conftest import error_lines, run_cli
from tests.miniatures import make_recipe_miniature, miniature_config

PHI4_MINI = load_recipe("phi-4-mini-instruct")
IDS = {"<|endoftext|>": 0, "<|end|>": 1}


def phi4_mini_config():
    return miniature_config(PHI4_MINI.structure, IDS, "<|endoftext|>", "<|end|>")


def test_a_miniature_is_the_recipes_model_made_smaller():
    found = compare_structure(PHI4_MINI.structure, phi4_mini_config(), "phi-4-mini-instruct")
    assert not found["matches_recipe"]
    assert found["differs"]["layers"] == 2 and found["differs"]["vocab_size"] == 2000
    assert found["differs"]["rope.original_context"] == 64


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda c: c.update(head_dim=96), "head_dim 96 (recipe: 128)"),
        (lambda c: c.update(tie_word_embeddings=False), "tied_embeddings False (recipe: True)"),
        (lambda c: c.update(partial_rotary_factor=1.0), "rope.partial_rotary 1.0 (recipe: 0.75)"),
        (lambda c: c["rope_scaling"]["long_factor"].__setitem__(5, 9.0), "rope.long_factor differs"),
        (lambda c: c.update(rope_theta=500000.0), "rope.theta 500000.0 (recipe: 10000.0)"),
    ],
)
def test_another_model_is_refused_naming_what_differs(change, named):
    config = copy.deepcopy(phi4_mini_config())
    change(config)
    with pytest.raises(SourceError, match="not the model recipe phi-4-mini-instruct describes") as error:
        compare_structure(PHI4_MINI.structure, config, "phi-4-mini-instruct")
    assert named in str(error.value)


def test_transformers5_configs_and_qwen2_biases_are_read():
    config = {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "num_hidden_layers": 24,
        "hidden_size": 896,
        "intermediate_size": 4864,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "vocab_size": 151936,
        "max_position_embeddings": 32768,
        "tie_word_embeddings": True,
        "rope_parameters": {"rope_theta": 1000000.0, "rope_type": "default"},
    }
    assert read_structure(config, "x").model_dump(exclude={"source"}) == load_recipe(
        "qwen2.5-0.5b-instruct"
    ).structure.model_dump(exclude={"source"})


def test_build_refuses_a_checkpoint_of_another_family_with_one_line(tmp_path):
    llama = make_recipe_miniature(load_recipe("llama-3.2-1b-instruct"), tmp_path / "llama")
    result = run_cli("build", str(llama), "-r", "phi-4-mini-instruct", "-o", str(tmp_path / "out"))
    assert result.returncode == 3
    [line] = [line for line in error_lines(result) if line.startswith("error:")]
    assert "not the model recipe phi-4-mini-instruct describes: architecture LlamaForCausalLM" in line
    assert "head_dim 64 (recipe: 128)" in line and "fix: use the recipe of this model" in line
    assert not (tmp_path / "out").exists()
