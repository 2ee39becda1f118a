"""What every command shares: the --json and --debug flags, consoles, and turning any failure into one
`error: <cause> — fix: <fix>` line with its exit code."""

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

from phiexport.errors import Interrupted, PhiexportError
from phiexport.interrupts import interruptible, was_interrupted

JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout instead of tables.")]
DebugFlag = Annotated[bool, typer.Option("--debug", help="Show the full traceback of unexpected errors.")]
KeyOption = Annotated[
    Path | None, typer.Option("--key", help="ed25519 private key (PEM) [$PHIEXPORT_SIGNING_KEY holds the PEM text].")
]


def stderr_console() -> Console:
    # A duplicate of fd 2: the build redirects fds 1 and 2 into its log while the builder runs.
    return Console(file=os.fdopen(os.dup(2), "w", buffering=1), stderr=True)


def stdout_console() -> Console:
    """A terminal's own width; piped or redirected, whole lines (rich would fold tables at 80 columns)."""
    return Console() if sys.stdout.isatty() else Console(width=240)


def _report(error: PhiexportError, as_json: bool) -> None:
    for line in error.lines:  # details first (failed gates, files that differ), then the one error line
        print(line, file=sys.stderr)
    message = str(error).replace("\n", " ")
    print(f"error: {message}", file=sys.stderr)
    if as_json:
        payload: dict[str, Any] = {"cause": error.cause, "fix": error.fix, "exit_code": error.exit_code}
        if error.lines:
            payload["details"] = list(error.lines)
        print(json.dumps({"error": payload}))


def fail(error: PhiexportError, as_json: bool) -> NoReturn:
    _report(error, as_json)
    raise SystemExit(error.exit_code)


@contextmanager
def reported_errors(as_json: bool, debug: bool, interrupted_fix: str | None = None) -> Iterator[None]:
    """Every failure leaves as one `error: <cause> — fix: <fix>` line and its exit code (see errors.py)."""
    try:
        with interruptible():
            yield
    except KeyboardInterrupt:
        exit_interrupted(as_json, interrupted_fix)
    except Exception as exc:
        if was_interrupted():
            exit_interrupted(as_json, interrupted_fix)
        if debug:
            raise
        fail(_as_user_error(exc), as_json)


def _as_user_error(exc: Exception) -> PhiexportError:
    if isinstance(exc, PhiexportError):
        return exc
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return PhiexportError(f"no space left on device ({exc.filename or 'disk'})", "free disk space and rebuild")
    if isinstance(exc, OSError) and exc.filename:
        return PhiexportError(f"{exc.strerror or exc}: {exc.filename}", "check the path and its permissions")
    return PhiexportError(f"internal error {type(exc).__name__}: {exc}", "rerun with --debug and report it")


def exit_interrupted(as_json: bool, fix: str | None = None) -> NoReturn:
    """Report the interrupt and leave at once with 130; every staging folder is already removed by now.

    Skipping interpreter finalization is deliberate: an interrupt that lands inside a C extension's import (torch,
    onnx) made CPython exit with -2 (its unhandled-KeyboardInterrupt flag) or crash with -11 while finalizing.
    """
    error = Interrupted("interrupted", fix or "run the command again; nothing was published")
    _report(error, as_json)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(error.exit_code)


def recipe_overrides(by_flag: dict[str, tuple[str, Any]]) -> tuple[dict[str, Any], dict[str, str]]:
    """`{"--chunk": ("npu.chunk", 64)}` → nested recipe overrides for the flags given (not None), and the recipe
    key → flag map that lets a refused value's error name the flag."""
    overrides: dict[str, Any] = {}
    flags: dict[str, str] = {}
    for flag, (key, value) in by_flag.items():
        if value is None:
            continue
        *sections, name = key.split(".")
        branch = overrides
        for section in sections:
            branch = branch.setdefault(section, {})
        branch[name] = value
        flags[key] = flag
    return overrides, flags
