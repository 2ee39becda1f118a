"""Two independent builds of the same recipe and source are byte-identical, package by package, file by file."""

import hashlib
import json
from pathlib import Path

import pytest

from tests.conftest import run_cli


def tree_digest(output: Path) -> tuple[str, dict[str, str]]:
    """sha256 of every file under `output`, and one sha256 over the sorted (path, digest) list."""
    files = {
        path.relative_to(output).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(output.rglob("*"))
        if path.is_file()
    }
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest(), files


@pytest.mark.slow
def test_two_builds_of_one_recipe_are_byte_identical(mini_phi4, tmp_path):
    """GPTQ calibration, the NPU's activation calibration, QDQ, the HTP compile and the check all run twice, in two
    processes writing to different output folders."""
    args = ("--target", "cpu", "--target", "npu", "--quant", "gptq", "--calibration-sequences", "4")
    args += ("--context-length", "128", "--eval-sequences", "2")
    outputs = []
    for run in ("first", "second"):
        output = tmp_path / run / "out"
        result = run_cli("build", str(mini_phi4), *args, "-o", str(output), env={"TMPDIR": str(tmp_path)})
        assert result.returncode == 0, result.stderr
        outputs.append(output)
    (first, first_files), (second, second_files) = (tree_digest(output) for output in outputs)
    differing = sorted(
        name for name in first_files.keys() | second_files.keys() if first_files.get(name) != second_files.get(name)
    )
    assert differing == [], differing
    assert first == second and len(first_files) > 10
