"""Command line: parse flags into a Recipe, call one library function, print with rich or as --json.

One module per command; heavy libraries (torch, transformers, onnxruntime) are imported inside the commands so
`--help` is instant.
"""

from __future__ import annotations

from typing import Annotated

import typer

from phiexport import __version__
from phiexport.cli import build, evaluate, inspect_package, run, sign
from phiexport.cli.common import exit_interrupted, fail
from phiexport.errors import UsageError

app = typer.Typer(
    name="phiexport",
    help="Turn Hugging Face causal LMs into verified on-device ONNX packages.",
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

app.command()(build.build)
app.command("eval")(evaluate.evaluate)
app.command()(inspect_package.inspect)
app.command()(run.run)
app.command()(sign.keygen)
app.command()(sign.sign)
app.command()(sign.verify)


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
        fail(error, as_json=False)
    except typer.Abort:
        exit_interrupted(as_json=False)
    except typer.Exit as exc:
        raise SystemExit(exc.exit_code) from None
