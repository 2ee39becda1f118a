"""`phiexport eval`: packages side by side against their reference, as a report folder and a card."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from phiexport.cli.common import (
    DebugFlag,
    JsonFlag,
    recipe_overrides,
    reported_errors,
    stderr_console,
    stdout_console,
)
from phiexport.errors import UsageError


def evaluate(
    packages: Annotated[
        list[Path], typer.Argument(help="Package folders (packages/<recipe>/cpu) or whole build outputs.")
    ],
    reference: Annotated[
        str | None,
        typer.Option(help="Reference model: HF directory, .gguf or Hub id. Default: the packages' own source."),
    ] = None,
    revision: Annotated[str | None, typer.Option(help="Hub branch, tag or commit of --reference.")] = None,
    trust_remote_code: Annotated[
        bool, typer.Option("--trust-remote-code", help="Allow the reference's own Python code.")
    ] = False,
    recipe: Annotated[
        str | None,
        typer.Option("--recipe", "-r", help="Take settings and gates from this recipe, not the first package's."),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Report folder [reports/<recipe>]; an earlier report there is resumed."),
    ] = None,
    sequences: Annotated[
        int | None, typer.Option(help="Held-out conversations scored teacher-forced [recipe's, 32].")
    ] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Each scored conversation is cut to this many tokens.")] = None,
    limit: Annotated[
        int | None, typer.Option(help="GSM8K problems answered greedily, 0 skips the task [recipe's, 100].")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Draw the GSM8K problems with this seed [file order].")] = None,
    sim_problems: Annotated[
        int | None, typer.Option(help="Of those, answered on the HTP simulator too (slow: ~5 s per token) [0].")
    ] = None,
    new_tokens: Annotated[
        int | None, typer.Option(help="New-token budget per answer; reasoning models think first, so raise it [256].")
    ] = None,
    npu_device: Annotated[
        list[str] | None,
        typer.Option(help="Where NPU packages run, repeatable: cpu (CPU EP), htp-sim (HTP simulator) [both]."),
    ] = None,
    device: Annotated[
        str | None,
        typer.Option(help="Where the torch reference runs: auto (a CUDA GPU if torch sees one), cpu or cuda."),
    ] = None,
    max_kl: Annotated[float | None, typer.Option(help="Gate: largest mean KL.")] = None,
    min_top1: Annotated[float | None, typer.Option(help="Gate: smallest top-1 agreement (0-1).")] = None,
    max_ppl_ratio: Annotated[float | None, typer.Option(help="Gate: largest perplexity ratio.")] = None,
    min_answer_agreement: Annotated[
        float | None, typer.Option(help="Gate: smallest share of GSM8K answers equal to the reference's (0-1).")
    ] = None,
    as_json: JsonFlag = False,
    debug: DebugFlag = False,
) -> None:
    """Score packages side by side against their reference: perplexity, KL, top-1, greedy and GSM8K agreement.

    Writes report.json, report.md and PNG plots. Packages that miss a gate make the exit code 4. Every scored item is
    kept under OUTPUT/raw/ as it is scored: after Ctrl-C, the same command resumes where it stopped."""
    resume = "run the same command again: it resumes from what was scored"
    with reported_errors(as_json, debug, interrupted_fix=resume):
        from phiexport.evaluate.compare import NPU_DEVICES
        from phiexport.evaluate.run import gate_failure, run_eval
        from phiexport.progress import StageProgress
        from phiexport.recipe import SourceConfig, load_recipe

        devices = tuple(npu_device or NPU_DEVICES)
        if unknown := sorted(set(devices) - set(NPU_DEVICES)):
            raise UsageError(f"unknown --npu-device {', '.join(unknown)}", f"choose from {', '.join(NPU_DEVICES)}")
        overrides, flags = recipe_overrides(
            {
                "--sequences": ("evaluation.sequences", sequences),
                "--max-tokens": ("evaluation.max_tokens", max_tokens),
                "--limit": ("evaluation.problems", limit),
                "--seed": ("evaluation.problem_seed", seed),
                "--sim-problems": ("evaluation.simulator_problems", sim_problems),
                "--new-tokens": ("evaluation.answer_tokens", new_tokens),
                "--device": ("calibration.device", device),
                "--max-kl": ("gates.max_kl", max_kl),
                "--min-top1": ("gates.min_top1", min_top1),
                "--max-ppl-ratio": ("gates.max_ppl_ratio", max_ppl_ratio),
                "--min-answer-agreement": ("gates.min_answer_agreement", min_answer_agreement),
            }
        )
        settings = load_recipe(recipe) if recipe is not None else None
        source = None
        if reference is not None:
            source = SourceConfig(model=reference, revision=revision, trust_remote_code=trust_remote_code)
        destination = output or Path("reports") / _report_name(packages, settings)
        console = None if as_json else stderr_console()
        progress = StageProgress(console)
        try:
            markdown, evaluation = run_eval(
                packages,
                output=destination,
                recipe=settings,
                overrides=overrides,
                flags=flags,
                reference=source,
                npu_devices=devices,
                progress=progress,
            )
        finally:
            progress.close()
        failure = gate_failure(evaluation, markdown)
        if as_json:
            if failure:  # stdout holds one JSON object: the error, whose fix names the report
                raise failure
            print(json.dumps({"report": str(markdown.absolute()), **evaluation.report}, indent=2))
            return
        _print_card(evaluation.report)
        stdout_console().print(f"report: {markdown}")
        if failure:
            raise failure


def _report_name(packages: list[Path], recipe: Any) -> str:
    """reports/<recipe name> of the first package (or of --recipe)."""
    if recipe is not None:
        return str(recipe.name)
    from phiexport.package.manifest import package_dirs, read_manifest

    return str(read_manifest(package_dirs(packages[:1])[0])["recipe"]["name"])


def _print_card(report: dict[str, Any]) -> None:
    table = Table(title=f"{report['reference']['model']}: {report['data']['tokens']:,} tokens scored")
    table.add_column("package", no_wrap=True)
    for column in ("ppl ratio", "KL mean", "KL p99", "top-1", "GSM8K", "= ref", "s/problem", "gates"):
        table.add_column(column)
    for row in report["packages"]:
        m, t = row["metrics"], row["task"]
        table.add_row(
            row["label"],
            f"{m['ppl_ratio']:.3f}",
            f"{m['kl_mean']:.4f}",
            f"{m['kl_p99']:.3f}",
            f"{m['top1_agreement']:.1%}",
            f"{t['accuracy']:.0%}" if t else "–",
            f"{t['answer_agreement']:.0%}" if t else "–",
            f"{t['seconds_per_problem']}" if t else "–",
            "pass" if row["gates"]["passed"] else "FAIL",
        )
    stdout_console().print(table)
