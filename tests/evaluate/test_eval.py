"""`phiexport eval` on miniature packages: exact against the reference in fp32, the card's files, gates, resuming."""

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.conftest import assert_one_line_error, error_lines, run_cli
from tests.sabotage import scramble_scales

pytestmark = pytest.mark.slow  # two package builds, then an eval subprocess per test (12-56 s each)
TASK = ("--sequences", "3", "--limit", "3", "--new-tokens", "24")


@pytest.fixture(scope="module")
def mini_packages(mini_phi4, tmp_path_factory) -> dict[str, Path]:
    from phiexport.pipeline import build
    from phiexport.recipe import recipe_for_source

    packages = {}
    for precision in ("fp32", "int4"):
        recipe = recipe_for_source(str(mini_phi4)).with_overrides(
            {"quantization": {"precision": precision}, "evaluation": {"sequences": 2, "greedy_prompts": 0}}
        )
        packages[precision] = build(recipe, tmp_path_factory.mktemp(precision) / "out").packages["cpu"]
    return packages


def journal_lines(report: Path, prefix: str) -> list[dict]:
    (journal,) = (report / "raw").glob(f"{prefix}-*.jsonl")
    return [json.loads(line) for line in journal.read_text().splitlines()]


def test_an_fp32_package_scores_and_answers_exactly_as_its_reference(mini_packages, tmp_path):
    report_dir = tmp_path / "report"
    packages = [str(mini_packages["fp32"]), str(mini_packages["int4"])]
    result = run_cli("eval", *packages, *TASK, "-o", str(report_dir), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    fp32, int4 = report["packages"]
    assert (fp32["label"], int4["label"]) == ("cpu-fp32", "cpu-int4")
    assert fp32["metrics"]["kl_mean"] < 1e-6 and fp32["metrics"]["top1_agreement"] == 1.0
    assert abs(fp32["metrics"]["ppl_ratio"] - 1) < 1e-5
    assert fp32["task"]["greedy_identical"] == 1.0 and fp32["task"]["answer_agreement"] == 1.0
    assert fp32["task"]["accuracy"] == report["reference"]["task"]["accuracy"]
    assert fp32["task"]["new_tokens"] == report["reference"]["task"]["new_tokens"]
    assert 1e-3 < int4["metrics"]["kl_mean"] < 0.03  # the int4 rounding is measured, not hidden (0.015)
    assert report["data"]["tokens"] == fp32["metrics"]["tokens"] == int4["metrics"]["tokens"] > 100
    assert report["passed"] and report["schema"] == "phiexport.eval/1"
    assert Path(report["report"]) == report_dir / "report.md" and Path(fp32["path"]) == mini_packages["fp32"]
    assert "Loading weights" not in result.stderr  # under --json, no transformers bar either

    assert json.loads((report_dir / "report.json").read_text())["packages"] == report["packages"]
    markdown = (report_dir / "report.md").read_text()
    assert "| cpu-fp32 | CPU EP |" in markdown and "| cpu-int4 | CPU EP |" in markdown
    for plot in report["files"]["plots"]:
        assert f"![{plot}]({plot})" in markdown
        with Image.open(report_dir / plot) as image:
            assert image.format == "PNG" and image.width > 400


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU, so --device cuda is not refused")
def test_eval_on_a_gpu_that_is_not_there_is_refused_before_any_work(mini_packages, tmp_path):
    result = run_cli("eval", str(mini_packages["int4"]), *TASK, "-o", str(tmp_path / "r"), "--device", "cuda")
    assert_one_line_error(result, 2, "--device cuda", "sees no CUDA GPU", "--device cpu")
    assert not (tmp_path / "r").exists()


def test_a_gate_missed_in_eval_exits_4_with_one_line_and_the_report_written(mini_packages, tmp_path):
    result = run_cli("eval", str(mini_packages["int4"]), *TASK, "-o", str(tmp_path / "r"), "--max-kl", "1e-6")
    assert result.returncode == 4, result.stderr
    lines = error_lines(result)
    assert lines[-2].startswith("gate failed: kl_mean ") and lines[-2].endswith(" > 1e-06 (cpu-int4)")
    assert lines[-1].startswith("error: 1 of 1 packages failed their gates — fix: see ")
    # Piped, the card prints whole numbers (rich alone would squeeze it into 80 columns: "0.0…").
    (row,) = [line for line in result.stdout.splitlines() if "cpu-int4" in line]
    cells = [cell.strip() for cell in row.strip().strip("│").split("│")]
    assert "…" not in result.stdout and cells[-1] == "FAIL", result.stdout
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["passed"] is False and report["gates"] == {"max_kl": 1e-6, "max_ppl_ratio": 2.0}
    assert "**FAIL**" in (tmp_path / "r" / "report.md").read_text()
    assert abs(float(cells[2]) - report["packages"][0]["metrics"]["kl_mean"]) < 1e-4


def test_a_larger_evaluation_reuses_everything_already_scored(mini_packages, tmp_path):
    report_dir, package = tmp_path / "report", str(mini_packages["int4"])
    common = ("--sequences", "2", "--new-tokens", "16", "-o", str(report_dir))
    assert run_cli("eval", package, *common, "--limit", "2").returncode == 0
    first = journal_lines(report_dir, "reference")
    assert run_cli("eval", package, *common, "--limit", "4").returncode == 0
    second = journal_lines(report_dir, "reference")
    assert len(first) == 2 and len(second) == 4 and second[:2] == first  # the first two answers were not redone
    assert len(journal_lines(report_dir, "cpu-int4")) == 2 + 4  # 2 scored sequences, 4 answers


def test_a_copy_with_changed_weights_never_reuses_the_original_results(mini_packages, tmp_path):
    """Rows are journaled by their files' contents, so a tampered copy with the same manifest is scored afresh."""
    sabotaged = tmp_path / "scrambled" / "cpu"
    shutil.copytree(mini_packages["int4"], sabotaged)
    assert scramble_scales(sabotaged / "model.onnx") > 0
    command = ("eval", str(mini_packages["int4"]), str(sabotaged), *TASK, "-o", str(tmp_path / "r"), "--json")
    first, again = (run_cli(*command) for _ in range(2))
    assert first.returncode == again.returncode == 0, first.stderr + again.stderr
    kl = [{row["label"]: row["metrics"]["kl_mean"] for row in json.loads(r.stdout)["packages"]} for r in (first, again)]
    assert kl[0] == kl[1] and len(set(kl[0].values())) == 2


def test_ctrl_c_keeps_every_scored_item_and_the_same_command_resumes(mini_packages, tmp_path):
    report_dir = tmp_path / "report"
    command = [sys.executable, "-m", "phiexport", "eval", str(mini_packages["int4"]), "-o", str(report_dir)]
    command += ["--sequences", "2", "--limit", "40", "--new-tokens", "48"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list((report_dir / "raw").glob("reference-*.jsonl")) or len(journal_lines(report_dir, "reference")) < 3:
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "error: interrupted — fix: run the same command again: it resumes from what was scored" in stderr
    kept = journal_lines(report_dir, "reference")
    assert 3 <= len(kept) < 40
    assert not (report_dir / "report.json").exists()

    resumed = subprocess.run([*command, "--json"], capture_output=True, text=True, timeout=300, check=False)
    assert resumed.returncode == 0, resumed.stderr
    final = journal_lines(report_dir, "reference")
    assert len(final) == 40 and final[: len(kept)] == kept  # nothing scored before the interrupt was redone
    assert json.loads(resumed.stdout)["reference"]["task"]["problems"] == 40


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{tmp}"], "is not a phiexport package (no manifest.json) — fix: pass package folders"),
        (["{int4}", "--limit", "0", "--min-answer-agreement", "0.9"], "gate min_answer_agreement needs"),
        (["{int4}", "--npu-device", "gpu"], "unknown --npu-device gpu — fix: choose from cpu, htp-sim"),
        (["{int4}", "-o", "{int4}"], "exists and is not an eval report — fix: pass a new or empty --output"),
        (["{int4}", "--reference", "{tmp}/missing"], "no such file or directory"),
    ],
)
def test_bad_eval_input_is_one_line_and_exit_2(mini_packages, tmp_path, args, message):
    filled = [arg.format(tmp=tmp_path, int4=mini_packages["int4"]) for arg in args]
    result = run_cli("eval", *filled)
    assert result.returncode == 2, result.stderr
    (line,) = error_lines(result)
    assert line.startswith("error: ") and message in line


def test_a_row_that_answered_nothing_is_drawn_and_tabled_as_not_asked(tmp_path):
    """An HTP-simulator row is scored teacher-forced only: its task is empty, in the plots and in the table."""
    import numpy as np

    from phiexport.evaluate.compare import Evaluation
    from phiexport.evaluate.report_card import write_report_card

    metrics = {"ppl_reference": 4.0, "ppl_package": 4.2, "ppl_ratio": 1.05, "kl_mean": 0.07, "kl_p99": 0.6}
    metrics |= {"top1_agreement": 0.89, "tokens": 3}
    task = {"problems": 1, "accuracy": 1.0, "answer_agreement": 1.0, "greedy_identical": 1.0}
    task |= {"seconds_per_problem": 2.0, "differences": []}
    gates = {"limits": {"max_kl": 0.15}, "passed": True, "failed": []}
    row = {"runs_on": "CPU EP", "bytes": 2**20, "metrics": metrics, "gates": gates}
    report = {
        "schema": "phiexport.eval/1",
        "reference": {
            "model": "m",
            "revision": None,
            "runs_on": "torch",
            "task": {"accuracy": 1.0, "seconds_per_problem": 9.0},
        },
        "data": {
            "sequences": 1,
            "max_tokens": 32,
            "tokens": 3,
            "problems": 1,
            "problem_seed": None,
            "answer_tokens": 16,
        },
        "gates": {"max_kl": 0.15},
        "packages": [{**row, "label": "npu-int4@cpu", "task": task}, {**row, "label": "npu-int4@htp-sim", "task": {}}],
        "passed": True,
    }
    kl = {"npu-int4@cpu": np.array([0.01, 0.1, 0.2]), "npu-int4@htp-sim": np.array([0.0, 0.1, 0.3])}
    markdown = write_report_card(Evaluation(report, kl), tmp_path).read_text()
    assert (
        "| npu-int4@htp-sim | CPU EP | 1 MiB | 4.000 → 4.200 | 1.050 | 0.0700 | 0.600 | 89.00% | – | – | – | – | pass |"
        in markdown
    )
    assert "| npu-int4@cpu | CPU EP | 1 MiB |" in markdown and "| 100% | 100% | 100% | 2.0 | pass |" in markdown
    for plot in ("accuracy.png", "kl_histogram.png"):
        with Image.open(tmp_path / plot) as image:
            assert image.format == "PNG"
