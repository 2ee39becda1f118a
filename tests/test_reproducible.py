"""Two independent builds of the same recipe and source are byte-identical, package by package, file by file."""

import hashlib
import json
from pathlib import Path

import pytest

from tests.conftest import build_mini_gptq


def tree_digest(output: Path) -> tuple[str, dict[str, str]]:
    """sha256 of every file under `output`, and one sha256 over the sorted (path, digest) list."""
    files = {
        path.relative_to(output).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(output.rglob("*"))
        if path.is_file()
    }
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest(), files


@pytest.mark.slow
def test_two_builds_of_one_recipe_are_byte_identical(mini_phi4, mini_gptq_root, mini_gptq_build):
    """GPTQ calibration, the NPU's activation calibration, QDQ, the HTP compile and the check all run twice, in two
    processes writing to different output folders."""
    (first, first_files), (second, second_files) = (
        tree_digest(output) for output in (mini_gptq_build, build_mini_gptq(mini_phi4, mini_gptq_root, "second"))
    )
    differing = sorted(
        name for name in first_files.keys() | second_files.keys() if first_files.get(name) != second_files.get(name)
    )
    assert differing == [], differing
    assert first == second and len(first_files) > 10
