"""The recipe loader under hypothesis: whatever a file or a flag holds, the answer is a Recipe or our UsageError, never
a traceback. Derandomized, so CI and a laptop explore the same examples."""

from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phiexport.errors import UsageError
from phiexport.recipe import Recipe, load_recipe

FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=300,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.sampled_from(["int4", "npu", "gptq", "auto", "longrope", "x-elite", "phi3", "64", "0", "-1", "1e9"])
)
values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
)
BASE = load_recipe("phi-4-mini-instruct").model_dump(mode="json")


def leaf_paths(data: Any, prefix: tuple = ()) -> list[tuple]:
    if isinstance(data, dict) and data:
        return [prefix] + [path for key, value in data.items() for path in leaf_paths(value, (*prefix, key))]
    return [prefix]


PATHS = leaf_paths(BASE)


def replaced(data: Any, path: tuple, value: Any) -> Any:
    if not path:
        return value
    return {**data, path[0]: replaced(data[path[0]], path[1:], value)}


def outcome(path: Path) -> Recipe | None:
    """load_recipe's answer, or None for a UsageError that names the recipe and carries a fix."""
    try:
        return load_recipe(path)
    except UsageError as error:
        assert error.cause and error.fix and "\n" not in error.fix
        return None


@FUZZ
@given(text=st.text(max_size=300) | st.binary(max_size=300))
def test_any_file_contents_load_or_fail_with_our_error(tmp_path: Path, text: str | bytes):
    path = tmp_path / "fuzz.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
    outcome(path)


@FUZZ
@given(path=st.sampled_from(PATHS), value=values)
def test_any_value_at_any_key_of_a_real_recipe_loads_or_fails_with_our_error(tmp_path: Path, path: tuple, value: Any):
    file = tmp_path / "fuzz.yaml"
    data = replaced(BASE, path, value)
    try:
        file.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    except UnicodeEncodeError:  # a lone surrogate cannot be written as UTF-8 at all
        return
    outcome(file)


@FUZZ
@given(name=st.text(max_size=40))
def test_any_recipe_name_is_found_or_refused_with_our_error(name: str):
    try:
        load_recipe(name)
    except UsageError as error:
        assert error.fix


@FUZZ
@given(section=st.sampled_from(["quantization", "npu", "evaluation", "gates", "calibration", "source"]), value=values)
def test_any_override_of_a_section_is_applied_or_refused_with_our_error(section: str, value: Any):
    recipe = load_recipe("smollm2-135m-instruct")
    try:
        recipe.with_overrides({section: value})
    except UsageError as error:
        assert error.cause.startswith("options: ") and error.fix
