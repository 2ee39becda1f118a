import pytest

from phiexport.errors import UsageError
from phiexport.recipe import Recipe, bundled_recipes, load_recipe, parse_recipe, recipe_for_source


def minimal(**extra):
    return {"version": 1, "name": "m", "source": {"model": "org/name"}, **extra}


@pytest.mark.parametrize("name", bundled_recipes())
def test_every_bundled_recipe_loads(name):
    recipe = load_recipe(name)
    assert recipe.name == name
    assert recipe.version == 1


def test_bundled_recipes_include_the_required_ones():
    assert {"smollm2-135m-instruct", "phi-4-mini-instruct"} <= set(bundled_recipes())


def test_yaml_and_flags_give_the_same_object(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("version: 1\nname: m\nsource: {model: org/name}\nquantization: {block_size: 64}\n")
    from_yaml = load_recipe(path)
    from_flags = recipe_for_source("org/name").with_overrides({"name": "m", "quantization": {"block_size": 64}})
    from_python = Recipe.model_validate(minimal(quantization={"block_size": 64}))
    assert from_yaml == from_flags == from_python


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (minimal(colour="red"), "unknown key 'colour'"),
        (minimal(quantization={"int4_block_size": 32}), "unknown key 'quantization.int4_block_size'"),
        (minimal(quantization={"block_size": 48}), "48 is not a MatMulNBits block size"),
        (minimal(quantization={"accuracy_level": 5}), "quantization.accuracy_level"),
        (minimal(quantization={"precision": "int3"}), "quantization.precision"),
        (minimal(quantization={"method": "k_quant", "symmetric": True}), "k_quant always stores zero points"),
        (minimal(quantization={"precision": "fp16"}), "target cpu does not run fp16"),
        (minimal(targets=["tpu"]), "unknown target 'tpu'"),
        (minimal(targets=["cpu", "cpu"]), "listed twice"),
        (minimal(evaluation={"sequences": 0}), "evaluation.sequences"),
        (minimal(targets=["npu"], quantization={"precision": "fp32"}), "target npu does not run fp32"),
        (minimal(npu={"socs": ["snapdragon-9000"]}), "fix: choose one of x-elite"),
        (minimal(npu={"socs": ["x-elite", "SC8380XP"]}), "a SoC is listed twice"),
        (minimal(npu={"context_length": 100}), "npu: context_length 100 is not a multiple of chunk 64"),
        (minimal(calibration={"sequences": 0}), "calibration.sequences"),
        (minimal(targets=["npu"], quantization={"method": "k_quant"}), "target npu runs symmetric weights only"),
        (minimal(targets=["npu"], quantization={"method": "gptq", "symmetric": False}), "symmetric weights only"),
        (minimal(quantization={"mixed": "auto", "precision": "int8"}), "set precision int4"),
        (minimal(quantization={"mixed": "auto", "precision": "fp32"}), "set precision int4"),
        (minimal(quantization={"mixed_bits": 3.5}), "quantization.mixed_bits"),
        (minimal(quantization={"method": "hqq"}), "quantization.method"),
        ({"name": "m", "source": {"model": "x/y"}}, "missing required key 'version'"),
        (minimal(version=2), "version"),
        (minimal(name="Has Spaces"), "name"),
    ],
)
def test_invalid_recipes_name_the_key(data, message):
    with pytest.raises(UsageError) as caught:
        parse_recipe(data, origin="recipe t.yaml")
    assert message in str(caught.value)
    assert caught.value.exit_code == 2
    assert "\n" not in str(caught.value)


def test_invalid_yaml_names_the_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("version: 1\nname: [unclosed\n")
    with pytest.raises(UsageError, match=r"not valid YAML at line \d"):
        load_recipe(path)


def test_unknown_recipe_lists_the_bundled_ones():
    with pytest.raises(UsageError) as caught:
        load_recipe("no-such-recipe")
    assert "smollm2-135m-instruct" in caught.value.fix


def test_recipe_for_source_derives_a_valid_name():
    assert recipe_for_source("/models/Phi-4-mini-instruct/").name == "phi-4-mini-instruct"
    assert recipe_for_source("SmolLM2-135M.Q4_1.gguf").name == "smollm2-135m.q4_1"
    assert recipe_for_source("microsoft/Phi-4").source.model == "microsoft/Phi-4"


def test_quantization_description_and_zero_points():
    recipe = Recipe.model_validate(minimal(quantization={"method": "k_quant", "block_size": 16}))
    assert recipe.quantization.zero_points
    assert recipe.quantization.describe() == "int4 k_quant block 16 asym"
    fp32 = Recipe.model_validate(minimal(quantization={"precision": "fp32"}))
    assert fp32.quantization.describe() == "fp32 (weights not quantized)"


def test_socs_accept_part_numbers():
    recipe = parse_recipe(minimal(npu={"socs": ["SM8650", "x-elite"]}), origin="t")
    assert recipe.npu.socs == ("8-gen-3", "x-elite")
