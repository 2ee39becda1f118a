"""The README's first command, CPU package: the embedded SmolLM2-135M-Instruct's GGUF integers, end to end."""

import hashlib
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import error_lines, run_cli
from tests.sabotage import scramble_scales

pytestmark = pytest.mark.slow


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_package_is_complete_and_every_file_is_in_the_manifest(smollm2_build, smollm2_gguf):
    package, _ = smollm2_build
    manifest = json.loads((package / "manifest.json").read_text())
    on_disk = {p.name for p in package.iterdir()} - {"manifest.json"}
    expected = {"model.onnx", "model.onnx.data", "genai_config.json", "tokenizer.json", "report.json", "README.md"}
    assert expected <= on_disk
    assert set(manifest["files"]) == on_disk
    for name, info in manifest["files"].items():
        assert info == {"sha256": sha256(package / name), "size": (package / name).stat().st_size}
    assert manifest["source"]["kind"] == "gguf"
    assert manifest["source"]["files"][smollm2_gguf.name]["sha256"] == sha256(smollm2_gguf)
    assert manifest["recipe"]["name"] == "smollm2-135m-instruct"
    # the GGUF's own integers, nothing re-quantized; int8 activations (accuracy level 4), as llama.cpp computes
    assert manifest["weights"] == {
        "precision": "int4",
        "body": "the GGUF's own integers (Q4_1 × 210, Q8_0 × 1), int8-activation compute",
        "imported": {
            "source": "GGUF",
            "imported": {"Q4_1": 210, "Q8_0": 1},
            "requantized": {},
            "kept_float": [],
            "accuracy_level": 4,
        },
    }
    import onnxruntime

    assert manifest["dependencies"]["onnxruntime"] == onnxruntime.__version__


def test_cpu_package_runs_on_onnxruntimes_thread_default(smollm2_build):
    """onnxruntime-genai's own thread count decodes 1.33-1.44x slower (BENCHMARKS.md, decode table)."""
    package, _ = smollm2_build
    decoder = json.loads((package / "genai_config.json").read_text())["model"]["decoder"]
    assert decoder["session_options"]["intra_op_num_threads"] == 0
    assert decoder["session_options"]["log_id"] == "onnxruntime-genai"  # the builder's own options are kept


def test_the_graph_names_the_builder_wheel_not_the_enclosing_repository(smollm2_build):
    """The genai builder stamps the git commit of whatever repository holds the virtual environment (this one, in
    CI): packages of one recipe would differ from commit to commit. phiexport stamps the wheel's own commit."""
    import onnx
    import onnxruntime_genai

    model = onnx.load(str(smollm2_build[0] / "model.onnx"), load_external_data=False)
    assert model.producer_version == f"{onnxruntime_genai.__version__}+{onnxruntime_genai.__commit__[:7]}"


def test_report_measures_the_package_against_the_reference(smollm2_build, smollm2_gguf):
    """The imported package against the dequantized GGUF, with int8 activations as llama.cpp multiplies them:
    measured KL 0.0025 (p99 0.019), top-1 98.2 %, perplexity ratio 1.005, 104.9 MB for the 98.4 MB GGUF (1.066 ×).
    llama.cpp's own KL on the same kind of text is 0.0029 (BENCHMARKS.md); an integer or scale error gives ≥ 1e-1
    (the scrambled-scales test below). The bounds sit 2 × above what was measured."""
    package, summary = smollm2_build
    report = json.loads((package / "report.json").read_text())
    metrics = report["metrics"]
    assert report["schema"] == "phiexport.report/1"
    assert report["data"]["sequences"] == 32 and metrics["tokens"] > 3000
    assert 3.0 < metrics["ppl_reference"] < 6.0  # SmolLM2 on GSM8K answers, dequantized fp32
    assert 1e-4 < metrics["kl_mean"] <= 0.005 and metrics["kl_p99"] <= 0.04
    assert metrics["top1_agreement"] >= 0.96
    assert abs(metrics["ppl_ratio"] - 1) < 0.02
    assert sum(path.stat().st_size for path in package.iterdir()) <= 1.07 * smollm2_gguf.stat().st_size
    assert len(report["greedy"]["prompts"]) == 3
    assert report["gates"] == {
        "limits": {"max_kl": 0.15, "min_top1": 0.8, "max_ppl_ratio": 1.15},
        "passed": True,
        "failed": [],
        "left_to_eval": [],
    }
    assert summary["metrics"]["cpu"] == metrics
    assert "KL(reference ‖ package)" in (package / "README.md").read_text()


def test_plain_onnxruntime_genai_generates_from_the_package(smollm2_build):
    package, _ = smollm2_build
    script = textwrap.dedent(f"""
        import onnxruntime_genai as og
        model = og.Model({str(package)!r})
        tokenizer = og.Tokenizer(model)
        prompt = tokenizer.apply_chat_template('[{{"role": "user", "content": "What is the opposite of hot?"}}]',
                                               add_generation_prompt=True)
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, max_length=128)
        generator = og.Generator(model, params)
        generator.append_tokens(tokenizer.encode(prompt))
        tokens = []
        while not generator.is_done() and len(tokens) < 24:
            generator.generate_next_token()
            tokens.append(generator.get_next_tokens()[0])
        print(tokenizer.decode(tokens))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert "phiexport" not in script.replace(str(package), "")
    assert "cold" in result.stdout


def test_run_streams_a_reply(smollm2_build):
    package, _ = smollm2_build
    result = run_cli("run", str(package), "What is 12 + 30?", "--max-tokens", "40", "--json")
    assert result.returncode == 0, result.stderr
    reply = json.loads(result.stdout)
    assert reply["new_tokens"] > 0 and reply["text"].strip()


def test_inspect_reports_ops_sizes_and_accuracy(smollm2_build):
    package, _ = smollm2_build
    result = run_cli("inspect", str(package), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    ops = summary["graphs"]["model.onnx"]
    assert ops["com.microsoft.MatMulNBits"] == 151
    assert ops["com.microsoft.GroupQueryAttention"] == 30
    assert ops["com.microsoft.GatherBlockQuantized"] == 1
    assert 95e6 < summary["total_bytes"] < 108e6
    assert summary["metrics"]["kl_mean"] == json.loads((package / "report.json").read_text())["metrics"]["kl_mean"]
    text = run_cli("inspect", str(package))
    assert "MatMulNBits 151" in text.stdout


def test_rebuilding_without_force_keeps_the_package(smollm2_build):
    package, _ = smollm2_build
    before = sha256(package / "manifest.json")
    result = run_cli("build", "-o", str(package.parent))
    assert result.returncode == 2 and "already exists" in result.stderr
    assert sha256(package / "manifest.json") == before


def test_eval_rejects_a_sabotaged_package_with_exit_4_beside_the_good_one(smollm2_build, tmp_path):
    """The side-by-side card on the real model: the CPU package, and a copy of it with the block scales of one weight
    shuffled (layer 0's q/k/v: measured KL 7.4, top-1 2.9 %), held to the bundled recipe's gates (KL ≤ 0.15, top-1
    ≥ 0.8). The NPU rows are tested on the miniature (tests/targets/test_npu_build.py)."""
    package = smollm2_build[0]
    sabotaged = tmp_path / "scrambled-scales" / "cpu"
    shutil.copytree(package, sabotaged)
    assert scramble_scales(sabotaged / "model.onnx", weights=1) == 1
    report_dir = tmp_path / "report"
    task = ("--sequences", "4", "--limit", "2", "--new-tokens", "64")
    result = run_cli("eval", str(package), str(sabotaged), *task, "-o", str(report_dir))
    assert result.returncode == 4, result.stderr[-2000:]
    gate_lines = [line for line in error_lines(result) if line.startswith("gate failed:")]
    assert gate_lines and all(line.endswith("(cpu-int4 (scrambled-scales))") for line in gate_lines)
    assert any(line.startswith("gate failed: kl_mean ") and " > 0.15 " in line for line in gate_lines)
    assert error_lines(result)[-1].startswith("error: 1 of 2 packages failed their gates — fix: see ")

    report = json.loads((report_dir / "report.json").read_text())
    rows = {row["label"]: row for row in report["packages"]}
    assert set(rows) == {"cpu-int4 (smollm2-135m-instruct)", "cpu-int4 (scrambled-scales)"}
    assert [label for label, row in rows.items() if not row["gates"]["passed"]] == ["cpu-int4 (scrambled-scales)"]
    assert rows["cpu-int4 (scrambled-scales)"]["metrics"]["kl_mean"] > 3.0
    good = rows["cpu-int4 (smollm2-135m-instruct)"]
    assert good["metrics"]["kl_mean"] < 0.01 and good["metrics"]["tokens"] > 300  # int8 activations: 0.0025
    assert good["task"]["problems"] == 2
