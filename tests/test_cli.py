import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import error_lines, run_cli

HEAVY_MODULES = ("torch", "transformers", "onnxruntime", "onnxruntime_genai", "onnx", "gguf", "numpy")


def test_help_imports_no_heavy_library():
    probe = (
        "import sys\nfrom phiexport.cli import main\n"
        "try:\n    main(['build', '--help'])\nexcept SystemExit:\n    pass\n"
        f"print(sorted(m for m in {HEAVY_MODULES!r} if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "[]"
    assert "--block-size" in result.stdout


def test_version_and_bare_command():
    assert run_cli("--version").stdout.strip() == "phiexport 0.1.0"
    bare = run_cli()
    assert bare.returncode == 0 and "build" in bare.stdout


def assert_one_line_error(result: subprocess.CompletedProcess[str], exit_code: int, *fragments: str) -> str:
    lines = [line for line in error_lines(result) if not line.startswith("✓ ")]  # finished-stage ticks may precede
    assert result.returncode == exit_code, result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and " — fix: " in lines[0]
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


@pytest.fixture
def gpt2_dir(miniature_dirs, tmp_path) -> Path:
    directory = Path(shutil.copytree(miniature_dirs["llama"], tmp_path / "gpt2"))
    (directory / "config.json").write_text('{"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}')
    return directory


@pytest.fixture
def recipe_with_unknown_key(tmp_path) -> Path:
    path = tmp_path / "typo.yaml"
    path.write_text("version: 1\nname: typo\nsource: {model: org/name}\nquantization: {blocksize: 64}\n")
    return path


@pytest.mark.parametrize(
    ("make_args", "exit_code", "fragments"),
    [
        (lambda f: ["./no-such-model"], 2, ["no such file or directory: ./no-such-model", "Hub id"]),
        (lambda f: [str(f["gpt2"])], 3, ["unsupported architecture", "phiexport supports", "phi3 (Phi3ForCausalLM)"]),
        (lambda f: ["-r", str(f["typo"])], 2, ["unknown key 'quantization.blocksize'"]),
        (lambda f: ["--block-size", "48"], 2, ["48 is not a MatMulNBits block size", "16, 32, 64, 128, 256"]),
        (lambda f: ["--precision", "int3"], 2, ["quantization.precision", "int3"]),
        (lambda f: ["--precision", "fp16"], 2, ["target cpu does not run fp16"]),
        (lambda f: ["--target", "tpu"], 2, ["unknown target 'tpu'"]),
        (lambda f: ["--block-size", "abc"], 2, ["--block-size", "see 'phiexport build --help'"]),
        (lambda f: ["--no-such-flag"], 2, ["No such option: --no-such-flag"]),
        (
            lambda f: ["-t", "cpu", "--quant", "k_quant", "--block-size", "64"],
            2,
            ["even number of blocks", "width 576"],
        ),
        (lambda f: ["--soc", "snapdragon-9000"], 2, ["unknown SoC 'snapdragon-9000'", "x-elite, x2-elite"]),
        (lambda f: ["--target", "npu", "--precision", "fp32"], 2, ["target npu does not run fp32", "int4, int8"]),
        (lambda f: ["--context-length", "100"], 2, ["context_length 100 is not a multiple of chunk 64"]),
        (lambda f: ["--target", "npu", "--block-size", "64"], 2, ["even number of 64-wide blocks", "width 576"]),
    ],
    ids=[
        "missing-path",
        "unsupported-arch",
        "unknown-recipe-key",
        "block-size-48",
        "bad-precision",
        "cpu-fp16",
        "unknown-target",
        "non-integer",
        "unknown-flag",
        "odd-block-count",
        "unknown-soc",
        "npu-fp32",
        "context-not-chunks",
        "npu-odd-blocks",
    ],
)
def test_bad_input_fails_in_one_line_and_writes_nothing(
    make_args, exit_code, fragments, gpt2_dir, recipe_with_unknown_key, tmp_path
):
    output = tmp_path / "out" / "package"
    result = run_cli("build", *make_args({"gpt2": gpt2_dir, "typo": recipe_with_unknown_key}), "-o", str(output))
    assert_one_line_error(result, exit_code, *fragments)
    assert not output.exists()
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_existing_output_is_not_overwritten(tmp_path):
    output = tmp_path / "package"
    output.mkdir()
    (output / "keep.txt").write_text("mine")
    result = run_cli("build", "-o", str(output))
    assert_one_line_error(result, 2, "already exists", "--force")
    assert (output / "keep.txt").read_text() == "mine"


def test_json_errors_are_machine_readable(tmp_path):
    result = run_cli("build", "./nowhere", "-o", str(tmp_path / "o"), "--json")
    assert result.returncode == 2
    payload = json.loads(result.stdout)["error"]
    assert payload["exit_code"] == 2 and "no such file" in payload["cause"] and payload["fix"]


def test_inspect_and_run_refuse_a_folder_that_is_not_a_package(tmp_path):
    assert_one_line_error(run_cli("inspect", str(tmp_path)), 2, "not a phiexport package")
    assert_one_line_error(run_cli("run", str(tmp_path), "hi"), 2, "no genai_config.json")


def _wait_for(condition, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError("condition not reached")


def _spawn_build(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "phiexport", "build", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _wait_for_stage(process: subprocess.Popen[str], done_line: str) -> None:
    assert process.stderr is not None
    while not process.stderr.readline().startswith(done_line):
        assert process.poll() is None, f"the build ended before {done_line!r}"


def _assert_interrupted_cleanly(process: subprocess.Popen[str], signum: int, tmp_path: Path, timeout: float) -> None:
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=timeout)
    assert process.returncode == 130, stderr
    assert "error: interrupted" in stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("signum", "stage"),
    [
        (signal.SIGINT, "load libraries"),
        (signal.SIGTERM, "load libraries"),
        (signal.SIGINT, "verify"),
        (signal.SIGTERM, "verify"),
    ],
)
def test_interrupted_build_leaves_nothing(miniature_dirs, tmp_path, signum, stage):
    output = tmp_path / "package"
    process = _spawn_build(
        str(miniature_dirs["llama"]), "-o", str(output), "--precision", "fp32", "--eval-sequences", "200"
    )
    if stage == "load libraries":  # the staging folder appears just before the (deferred) library imports
        _wait_for(lambda: any(p.name.startswith(".package.partial-") for p in tmp_path.iterdir()))
    else:  # right after the export stage reports done, the build is scoring 200 sequences
        _wait_for_stage(process, "✓ export")
    _assert_interrupted_cleanly(process, signum, tmp_path, timeout=120)


def test_interrupted_npu_build_leaves_nothing(mini_phi4, tmp_path):
    """SIGTERM while the NPU bodies are being quantized (native code): the build stops at the next stage boundary."""
    output = tmp_path / "package"
    process = _spawn_build(str(mini_phi4), "--target", "npu", "--context-length", "128", "-o", str(output))
    _wait_for_stage(process, "✓ npu calibrate")
    _assert_interrupted_cleanly(process, signal.SIGTERM, tmp_path, timeout=300)
