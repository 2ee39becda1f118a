"""The report card on disk: report.json (schema in docs/eval-report.md), report.md and its PNG figures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from phiexport import __version__
from phiexport.evaluate.compare import Evaluation
from phiexport.evaluate.plots import write_plots

REPORT_JSON, REPORT_MD = "report.json", "report.md"


def write_report_card(evaluation: Evaluation, output: Path) -> Path:
    """Write the card's files into `output` (each replaced whole; the report gains their names and the tool
    version); returns the markdown's path."""
    report = evaluation.report
    report["phiexport"] = __version__
    plots = write_plots(report, evaluation.token_kl, output)
    report["files"] = {"markdown": REPORT_MD, "plots": plots, "raw": "raw/"}
    _write_text(output / REPORT_JSON, json.dumps(report, indent=2) + "\n")
    _write_text(output / REPORT_MD, render_markdown(report))
    return output / REPORT_MD


def render_markdown(report: dict[str, Any]) -> str:
    data, reference = report["data"], report["reference"]
    lines = [
        f"# Accuracy report: {reference['model']}",
        "",
        f"Reference: {reference['runs_on']}. Every package scores the same {data['sequences']} held-out GSM8K test "
        f"conversations ({data['tokens']:,} assistant tokens, teacher-forced, cut to {data['max_tokens']} tokens)"
        + (
            f" and answers {data['problems']} GSM8K test problems greedily "
            f"({_selection(data)}, at most {data['answer_tokens']} new tokens)."
            if data["problems"]
            else "."
        ),
        "",
        "| package | runs on | size | ppl ref → pkg | ppl ratio | KL mean | KL p99 | top-1 | GSM8K | answers = ref "
        "| greedy identical | s / problem | gates |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in report["packages"]:
        m, t = row["metrics"], row["task"]
        lines.append(
            f"| {row['label']} | {row['runs_on']} | {row['bytes'] / 2**20:.0f} MiB "
            f"| {m['ppl_reference']:.3f} → {m['ppl_package']:.3f} | {m['ppl_ratio']:.3f} | {m['kl_mean']:.4f} "
            f"| {m['kl_p99']:.3f} | {m['top1_agreement']:.2%} | {_pct(t, 'accuracy')} | {_pct(t, 'answer_agreement')} "
            f"| {_pct(t, 'greedy_identical')} | {t.get('seconds_per_problem', '–')} "
            f"| {'pass' if row['gates']['passed'] else '**FAIL**'} |"
        )
    if data["problems"]:
        task = reference["task"]
        lines += [
            f"| reference | {reference['runs_on']} | | | | | | | {task['accuracy']:.0%} | | "
            f"| {task['seconds_per_problem']} | |",
        ]
    gates = ", ".join(f"{gate} {limit:g}" for gate, limit in report["gates"].items()) or "none"
    lines += ["", f"Gates: {gates}."]
    failed = [line for row in report["packages"] for line in row["gates"]["failed"]]
    lines += [f"- `{line}`" for line in failed]
    lines += ["", *(f"![{name}]({name})" for name in report["files"]["plots"])]
    if data["problems"]:
        lines += ["", "## Answers that differ from the reference's (first five per package)", ""]
        differences = [(row["label"], d) for row in report["packages"] for d in row["task"].get("differences", [])]
        for label, diff in differences:
            reply = " ".join(diff["reply"].split())[-160:]
            lines.append(
                f"- {label}, problem {diff['problem']} ({diff['question'][:60]}…): reference {diff['reference']}, "
                f"package {diff['package']} — reply ends “…{reply}”"
            )
        if not differences:
            lines.append("None: every package gives the reference's final answer to every problem.")
    lines += ["", f"phiexport {report['phiexport']}, schema {report['schema']}.", ""]
    return "\n".join(lines)


def _selection(data: dict[str, Any]) -> str:
    seed = data["problem_seed"]
    return "the first ones in file order" if seed is None else f"drawn with seed {seed}"


def _pct(values: dict[str, Any], key: str) -> str:
    return f"{values[key]:.0%}" if key in values else "–"


def _write_text(path: Path, text: str) -> None:
    """Write beside, then rename: a reader never sees half a report."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)
