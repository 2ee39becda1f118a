import json
import subprocess
import sys

from tests.conftest import assert_one_line_error, run_cli

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


def test_json_errors_are_machine_readable(tmp_path):
    result = run_cli("build", "./nowhere", "-o", str(tmp_path / "o"), "--json")
    assert result.returncode == 2
    payload = json.loads(result.stdout)["error"]
    assert payload["exit_code"] == 2 and "no such file" in payload["cause"] and payload["fix"]


def test_inspect_and_run_refuse_a_folder_that_is_not_a_package(tmp_path):
    assert_one_line_error(run_cli("inspect", str(tmp_path)), 2, "not a phiexport package")
    assert_one_line_error(run_cli("run", str(tmp_path), "hi"), 2, "no genai_config.json")
