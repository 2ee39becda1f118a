import json

import pytest

from phiexport.errors import UsageError
from phiexport.evaluate.gates import check_gates, gates_report
from phiexport.recipe import GatesConfig
from tests.conftest import error_lines, run_cli

METRICS = {"kl_mean": 0.091, "top1_agreement": 0.84, "ppl_ratio": 1.07}


def test_each_crossed_limit_is_one_line_naming_metric_value_limit_and_package():
    gates = GatesConfig(max_kl=0.05, min_top1=0.9, max_ppl_ratio=1.5)
    failures = check_gates(METRICS, gates, "cpu-int4")
    assert [str(failure) for failure in failures] == [
        "gate failed: kl_mean 0.091 > 0.05 (cpu-int4)",
        "gate failed: top1_agreement 0.84 < 0.9 (cpu-int4)",
    ]
    assert gates_report(gates, failures) == {
        "limits": {"max_kl": 0.05, "min_top1": 0.9, "max_ppl_ratio": 1.5},
        "passed": False,
        "failed": [str(failure) for failure in failures],
    }


def test_limits_met_exactly_pass_and_null_limits_are_off():
    assert check_gates(METRICS, GatesConfig(max_kl=0.091, min_top1=0.84, max_ppl_ratio=None), "npu-int4") == []


def test_a_metric_that_is_not_a_number_fails_its_gates():
    """A package whose logits hold NaN scores nan, which compares false with any limit: it must still fail."""
    gates = GatesConfig(max_kl=1.0, max_ppl_ratio=None)
    failures = check_gates({"kl_mean": float("nan"), "top1_agreement": 0.0}, gates, "cpu-int4")
    assert [str(failure) for failure in failures] == ["gate failed: kl_mean nan > 1 (cpu-int4)"]


def test_a_gate_on_an_unmeasured_metric_is_refused():
    with pytest.raises(UsageError, match="min_answer_agreement needs answer_agreement"):
        check_gates(METRICS, GatesConfig(min_answer_agreement=0.9), "cpu-int4")


@pytest.mark.slow
def test_a_build_leaves_the_answer_gate_to_eval_which_applies_it(mini_phi4, tmp_path):
    recipe = tmp_path / "gated.yaml"
    recipe.write_text(
        f"version: 1\nname: gated\nsource: {{model: {mini_phi4}}}\ngates: {{min_answer_agreement: 0.9}}\n"
        "evaluation: {sequences: 2, greedy_prompts: 0, problems: 2, answer_tokens: 16}\n"
    )
    result = run_cli("build", "-r", str(recipe), "-o", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr[-2000:]
    gates = json.loads((tmp_path / "out" / "cpu" / "report.json").read_text())["gates"]
    assert gates["passed"] and gates["left_to_eval"] == ["min_answer_agreement"]
    assert "min_answer_agreement" not in gates["limits"]
    assert "min_answer_agreement is checked by `phiexport eval`" in (tmp_path / "out" / "cpu" / "README.md").read_text()

    result = run_cli("eval", str(tmp_path / "out"), "-o", str(tmp_path / "report"), "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    (row,) = json.loads(result.stdout)["packages"]
    assert row["gates"]["limits"]["min_answer_agreement"] == 0.9 and row["task"]["problems"] == 2


@pytest.mark.slow
def test_a_build_over_its_gate_exits_4_and_is_withheld(mini_phi4, tmp_path):
    output = tmp_path / "packages"
    result = run_cli("build", str(mini_phi4), "-o", str(output), "--eval-sequences", "4", "--max-kl", "1e-9", "--json")
    assert result.returncode == 4, result.stderr[-2000:]
    failed = [line for line in result.stderr.splitlines() if line.startswith("gate failed:")]
    assert len(failed) == 1 and failed[0].startswith("gate failed: kl_mean ") and failed[0].endswith(" (cpu-int4)")
    assert "withheld" in error_lines(result)[-1]
    assert json.loads(result.stdout)["error"]["exit_code"] == 4
    assert not output.exists()  # nothing published where a CI job would pick it up
    report = json.loads((tmp_path / "packages.rejected" / "cpu" / "report.json").read_text())
    assert report["gates"]["passed"] is False and report["gates"]["limits"]["max_kl"] == 1e-9
    assert report["metrics"]["kl_mean"] > 1e-9
    assert "REJECTED — accuracy gates failed" in (tmp_path / "packages.rejected" / "cpu" / "README.md").read_text()
