"""Command line: parse flags into a Recipe, call one library function, print with rich or as --json.

Heavy libraries (torch, transformers, onnxruntime) are imported inside the commands so `--help` is instant.
"""

from __future__ import annotations

import errno
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from phiexport import __version__
from phiexport.errors import GateFailed, Interrupted, PhiexportError, UsageError
from phiexport.interrupts import interruptible, was_interrupted

app = typer.Typer(
    name="phiexport",
    help="Turn Hugging Face causal LMs into verified on-device ONNX packages.",
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout instead of tables.")]
DebugFlag = Annotated[bool, typer.Option("--debug", help="Show the full traceback of unexpected errors.")]


def _stderr_console() -> Console:
    # A duplicate of fd 2: the build redirects fds 1 and 2 into its log while the builder runs.
    return Console(file=os.fdopen(os.dup(2), "w", buffering=1), stderr=True)


def _stdout_console() -> Console:
    """A terminal's own width; piped or redirected, whole lines (rich would fold tables at 80 columns)."""
    return Console() if sys.stdout.isatty() else Console(width=240)


def _report(error: PhiexportError, as_json: bool) -> None:
    if isinstance(error, GateFailed):  # one line per failed gate, then what became of the packages
        for line in error.lines:
            print(line, file=sys.stderr)
        print(f"error: {error}", file=sys.stderr)
    else:
        message = str(error).replace("\n", " ")
        print(f"error: {message}", file=sys.stderr)
    if as_json:
        print(json.dumps({"error": {"cause": error.cause, "fix": error.fix, "exit_code": error.exit_code}}))


def _fail(error: PhiexportError, as_json: bool) -> NoReturn:
    _report(error, as_json)
    raise SystemExit(error.exit_code)


@contextmanager
def _reported_errors(as_json: bool, debug: bool, interrupted_fix: str | None = None) -> Iterator[None]:
    """Every failure leaves as one `error: <cause> — fix: <fix>` line and its exit code (see errors.py)."""
    try:
        with interruptible():
            yield
    except KeyboardInterrupt:
        _exit_interrupted(as_json, interrupted_fix)
    except Exception as exc:
        if was_interrupted():
            _exit_interrupted(as_json, interrupted_fix)
        if debug:
            raise
        _fail(_as_user_error(exc), as_json)


def _as_user_error(exc: Exception) -> PhiexportError:
    if isinstance(exc, PhiexportError):
        return exc
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return PhiexportError(f"no space left on device ({exc.filename or 'disk'})", "free disk space and rebuild")
    if isinstance(exc, OSError) and exc.filename:
        return PhiexportError(f"{exc.strerror or exc}: {exc.filename}", "check the path and its permissions")
    return PhiexportError(f"internal error {type(exc).__name__}: {exc}", "rerun with --debug and report it")


def _exit_interrupted(as_json: bool, fix: str | None = None) -> NoReturn:
    """Report the interrupt and leave at once with 130; every staging folder is already removed by now.

    Skipping interpreter finalization is deliberate: an interrupt that lands inside a C extension's import (torch,
    onnx) made CPython exit with -2 (its unhandled-KeyboardInterrupt flag) or crash with -11 while finalizing.
    """
    error = Interrupted("interrupted", fix or "run the command again; nothing was published")
    _report(error, as_json)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(error.exit_code)


@app.command()
def build(
    source: Annotated[
        str | None,
        typer.Argument(help="Local Hugging Face directory, .gguf file or Hub id (org/name). Default: the recipe's."),
    ] = None,
    recipe: Annotated[
        str | None, typer.Option("--recipe", "-r", help="Recipe YAML file or bundled recipe name.")
    ] = None,
    target: Annotated[
        list[str] | None, typer.Option("--target", "-t", help="Device target; repeatable: cpu, dml, npu.")
    ] = None,
    soc: Annotated[
        list[str] | None,
        typer.Option(help="npu: SoC to compile for, repeatable: x-elite, x2-elite, 8-gen-1/2/3, 8-elite, sm8850."),
    ] = None,
    context_length: Annotated[int | None, typer.Option(help="npu: KV cache slots (longest sequence).")] = None,
    chunk: Annotated[int | None, typer.Option(help="npu: prompt tokens per prefill step.")] = None,
    precision: Annotated[str | None, typer.Option(help="Weights: int4, int8, fp32 (cpu) or fp16 (dml).")] = None,
    quant: Annotated[str | None, typer.Option(help="Weight method: rtn, k_quant, or calibrated gptq or awq.")] = None,
    mixed: Annotated[
        str | None, typer.Option(help="auto: measured int4/int8 mix within --mixed-bits; off: one width.")
    ] = None,
    mixed_bits: Annotated[float | None, typer.Option(help="Mean bits per weight allowed by --mixed auto.")] = None,
    calibration_sequences: Annotated[
        int | None, typer.Option(help="GSM8K train conversations that calibrated methods see.")
    ] = None,
    block_size: Annotated[int | None, typer.Option(help="Quantization block: 16, 32, 64, 128 or 256.")] = None,
    symmetric: Annotated[
        bool | None, typer.Option("--symmetric/--asymmetric", help="Weights without or with zero points.")
    ] = None,
    accuracy_level: Annotated[int | None, typer.Option(help="MatMulNBits compute: 0-4 (4 = int8).")] = None,
    rotate: Annotated[
        bool, typer.Option("--rotate", help="Fold a randomized Hadamard rotation into the weights first.")
    ] = False,
    revision: Annotated[str | None, typer.Option(help="Hub branch, tag or commit.")] = None,
    allow_pickle: Annotated[
        bool, typer.Option("--allow-pickle", help="Allow pickle .bin weights (loaded weights-only).")
    ] = False,
    trust_remote_code: Annotated[
        bool, typer.Option("--trust-remote-code", help="Allow the checkpoint's own Python code.")
    ] = False,
    eval_sequences: Annotated[int | None, typer.Option(help="Held-out sequences scored in the build check.")] = None,
    max_kl: Annotated[float | None, typer.Option(help="Gate: largest mean KL a published package may have.")] = None,
    min_top1: Annotated[float | None, typer.Option(help="Gate: smallest top-1 agreement (0-1).")] = None,
    max_ppl_ratio: Annotated[
        float | None, typer.Option(help="Gate: largest perplexity ratio to the reference.")
    ] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Output folder [packages/<recipe>].")] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing output folder, once the new build succeeded.")
    ] = False,
    as_json: JsonFlag = False,
    debug: DebugFlag = False,
) -> None:
    """Build one verified package per target (default: the embedded SmolLM2-135M-Instruct, CPU int4 and NPU w4a16).

    Packages that fail the recipe's accuracy gates are withheld in OUTPUT.rejected/ and the exit code is 4."""
    with _reported_errors(as_json, debug):
        from phiexport.recipe import load_recipe, recipe_for_source

        if recipe is not None:
            base = load_recipe(recipe)
        elif source is not None:
            base = recipe_for_source(source)
        else:
            base = load_recipe("smollm2-135m-instruct")
        overrides: dict[str, Any] = {
            "source": _given(
                model=source,
                revision=revision,
                allow_pickle=allow_pickle or None,
                trust_remote_code=trust_remote_code or None,
            ),
            "quantization": _given(
                precision=precision,
                method=quant,
                block_size=block_size,
                symmetric=symmetric,
                accuracy_level=accuracy_level,
                rotate=rotate or None,
                mixed=mixed,
                mixed_bits=mixed_bits,
            ),
            "calibration": _given(sequences=calibration_sequences),
            "evaluation": _given(sequences=eval_sequences),
            "gates": _given(max_kl=max_kl, min_top1=min_top1, max_ppl_ratio=max_ppl_ratio),
            "npu": _given(socs=tuple(soc) if soc else None, context_length=context_length, chunk=chunk),
        }
        if source is not None and revision is None:
            overrides["source"]["revision"] = None  # a recipe's Hub revision does not apply to another source
        if target:
            overrides["targets"] = tuple(target)
        resolved = base.with_overrides(overrides)
        destination = output or Path("packages") / resolved.name

        from phiexport.pipeline import build as run_build
        from phiexport.progress import StageProgress

        console = None if as_json else _stderr_console()
        progress = StageProgress(console)
        try:
            result = run_build(resolved, destination, force=force, progress=progress)
        finally:
            progress.close()

        if as_json:
            print(
                json.dumps(
                    {
                        "output": str(result.output.absolute()),
                        "packages": {name: str(path.absolute()) for name, path in result.packages.items()},
                        "metrics": {name: report["metrics"] for name, report in result.reports.items()},
                        "timings_s": result.timings,
                    },
                    indent=2,
                )
            )
            return
        table = Table(title=f"{resolved.name}: {resolved.quantization.describe()}")
        table.add_column("package", overflow="fold")
        for column in ("ppl ref → pkg", "KL mean", "KL p99", "top-1"):
            table.add_column(column, no_wrap=True)
        for name, report in result.reports.items():
            m = report["metrics"]
            table.add_row(
                str(result.packages[name]),
                f"{m['ppl_reference']:.3f} → {m['ppl_package']:.3f}",
                f"{m['kl_mean']:.4f}",
                f"{m['kl_p99']:.4f}",
                f"{m['top1_agreement']:.1%}",
            )
        first = next(iter(result.packages.values()))
        stdout = _stdout_console()
        stdout.print(table)
        stdout.print(f'run it: phiexport run {first} "Hello"    inspect it: phiexport inspect {first}')


@app.command("eval")
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
    with _reported_errors(as_json, debug, interrupted_fix=resume):
        from phiexport.evaluate.compare import NPU_DEVICES
        from phiexport.evaluate.run import gate_failure, run_eval
        from phiexport.progress import StageProgress
        from phiexport.recipe import SourceConfig, load_recipe

        devices = tuple(npu_device or NPU_DEVICES)
        if unknown := sorted(set(devices) - set(NPU_DEVICES)):
            raise UsageError(f"unknown --npu-device {', '.join(unknown)}", f"choose from {', '.join(NPU_DEVICES)}")
        overrides = {
            "evaluation": _given(
                sequences=sequences,
                max_tokens=max_tokens,
                problems=limit,
                problem_seed=seed,
                simulator_problems=sim_problems,
                answer_tokens=new_tokens,
            ),
            "gates": _given(
                max_kl=max_kl,
                min_top1=min_top1,
                max_ppl_ratio=max_ppl_ratio,
                min_answer_agreement=min_answer_agreement,
            ),
        }
        settings = load_recipe(recipe) if recipe is not None else None
        source = None
        if reference is not None:
            source = SourceConfig(model=reference, revision=revision, trust_remote_code=trust_remote_code)
        destination = output or Path("reports") / _report_name(packages, settings)
        console = None if as_json else _stderr_console()
        progress = StageProgress(console)
        try:
            markdown, evaluation = run_eval(
                packages,
                output=destination,
                recipe=settings,
                overrides=overrides,
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
        _stdout_console().print(f"report: {markdown}")
        if failure:
            raise failure


def _report_name(packages: list[Path], recipe: Any) -> str:
    """reports/<recipe name> of the first package (or of --recipe)."""
    if recipe is not None:
        return str(recipe.name)
    from phiexport.evaluate.compare import package_dirs
    from phiexport.package.manifest import read_manifest

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
    _stdout_console().print(table)


@app.command()
def inspect(
    package: Annotated[Path, typer.Argument(help="A package directory, e.g. packages/<recipe>/cpu.")],
    as_json: JsonFlag = False,
    debug: DebugFlag = False,
) -> None:
    """Show a package's source, weights, op types per graph, file sizes and measured accuracy."""
    with _reported_errors(as_json, debug):
        from phiexport.package.inspect import summarize_package

        summary = summarize_package(package)
        if as_json:
            print(json.dumps(summary, indent=2))
            return
        console = _stdout_console()
        console.print(
            f"[bold]{summary['package']}[/bold]  target {summary['target']['name']}, recipe "
            f"{summary['recipe']}, phiexport {summary['phiexport']}"
        )
        source = summary["source"]
        console.print(f"source: {source['kind']} {source['origin']} ({source['architecture']})")
        weights = summary["weights"]
        console.print("weights: " + ", ".join(f"{k} {v}" for k, v in weights.items() if not isinstance(v, dict)))
        for soc, context in weights.get("contexts", {}).items():
            console.print(
                f"  {soc}: soc_model {context['soc_model']}, v{context['htp_arch']}, shared context binary "
                f"{context['shared_bytes']:,} B (two separate: {context['separate_bytes']:,} B)"
            )
        for graph, ops in summary["graphs"].items():
            console.print(f"{graph}: " + ", ".join(f"{op} {count}" for op, count in ops.items()))
        for name, size in summary["files"].items():
            console.print(f"  {size:>14,d}  {name}")
        console.print(f"  {summary['total_bytes']:>14,d}  total")
        if summary["metrics"]:
            m = summary["metrics"]
            console.print(
                f"accuracy: KL mean {m['kl_mean']:.4f}, p99 {m['kl_p99']:.4f}, top-1 "
                f"{m['top1_agreement']:.1%}, ppl {m['ppl_reference']:.3f} → {m['ppl_package']:.3f}"
            )


@app.command()
def run(
    package: Annotated[Path, typer.Argument(help="A package directory, e.g. packages/<recipe>/cpu.")],
    prompt: Annotated[str, typer.Argument(help="The user message.")],
    max_tokens: Annotated[int, typer.Option(min=1, help="Most new tokens to generate.")] = 256,
    system: Annotated[str | None, typer.Option(help="System message.")] = None,
    raw: Annotated[bool, typer.Option(help="Send the prompt as is, without the chat template.")] = False,
    hide_thinking: Annotated[
        bool, typer.Option(help="Reasoning models: print only the answer, not the <think> block (shown dimmed).")
    ] = False,
    device: Annotated[
        str | None,
        typer.Option(help="NPU packages only: cpu (QDQ graphs on the CPU EP) or htp-sim (HTP simulator) [cpu]."),
    ] = None,
    as_json: JsonFlag = False,
    debug: DebugFlag = False,
) -> None:
    """Stream a greedy reply from a package with the model's chat template (CPU and DirectML packages through
    onnxruntime-genai on the CPU, NPU packages through phiexport's prefill/decode pipeline). A reasoning model's
    thinking is shown dimmed before its answer."""
    with _reported_errors(as_json, debug):
        from phiexport.chat import GenerationStats, split_thinking, stream_reply, think_markers

        stats = GenerationStats()
        think = think_markers(package) if (package / "manifest.json").is_file() else None
        pieces = stream_reply(
            package, prompt, max_new_tokens=max_tokens, system=system, raw=raw, stats=stats, device=device
        )
        if as_json:
            text = "".join(pieces)
            thinking, answer = split_thinking(text, think)
            print(
                json.dumps(
                    {
                        "text": text,
                        "thinking": thinking,
                        "answer": answer,
                        "prompt_tokens": stats.prompt_tokens,
                        "new_tokens": stats.new_tokens,
                        "tokens_per_second": stats.new_tokens / max(stats.seconds, 1e-9),
                    }
                )
            )
            return
        console = Console(highlight=False)
        text, shown_thinking, shown_answer = "", 0, 0
        for piece in pieces:
            text += piece
            thinking, answer = split_thinking(text, think) if think else ("", text)
            if thinking[shown_thinking:] and not hide_thinking:
                console.print(thinking[shown_thinking:], end="", style="dim", markup=False, soft_wrap=True)
            if answer[shown_answer:]:
                if shown_answer == 0 and thinking and not hide_thinking:
                    console.print()
                console.print(answer[shown_answer:], end="", markup=False, soft_wrap=True)
            shown_thinking, shown_answer = len(thinking), len(answer)
        print()
        print(f"[{stats.new_tokens} tokens, {stats.new_tokens / max(stats.seconds, 1e-9):.1f} tok/s]", file=sys.stderr)


@app.callback(invoke_without_command=True)
def _root(
    context: typer.Context,
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if version:
        print(f"phiexport {__version__}")
        raise typer.Exit()
    if context.invoked_subcommand is None:
        print(context.get_help())
        raise typer.Exit()


def _given(**values: Any) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}


def main(argv: list[str] | None = None) -> None:
    """Console entry point: typer's own usage errors also become one `error:` line (exit 2)."""
    command = typer.main.get_command(app)
    try:
        command.main(args=argv, prog_name="phiexport", standalone_mode=False)
    except typer.TyperException as exc:  # typer's bundled click: UsageError, BadParameter, NoSuchOption, ...
        context = getattr(exc, "ctx", None)
        where = context.command_path if context else "phiexport"
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        error = UsageError(message, f"see '{where} --help'")
        error.exit_code = getattr(exc, "exit_code", 2)
        _fail(error, as_json=False)
    except typer.Abort:
        _exit_interrupted(as_json=False)
    except typer.Exit as exc:
        raise SystemExit(exc.exit_code) from None
