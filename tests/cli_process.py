"""`phiexport ARGS` in a process of its own, forked from one that has already imported the libraries a build loads.

Starting `python -m phiexport` costs ~6 s of imports (torch, transformers, onnx, onnxruntime, the genai builder)
before phiexport runs a line, and the suite runs the CLI about a hundred times. A multiprocessing forkserver imports
them once; each call is a fresh fork of it that sets the call's arguments, environment and working folder, sends
file descriptors 1 and 2 to files (so output of C code is caught too) and runs the console entry point, whose exit
status becomes the process's. What is read from the environment at import time cannot change per call, so a call
that changes such a variable runs `python -m phiexport` instead (conftest.run_cli).
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

PRELOAD = ["torch", "transformers", "onnx", "onnxruntime", "onnxruntime_genai.models.builder", "phiexport.cli"]
_context: list[Any] = []


def forked_cli(args: list[str], environ: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run the CLI with `args` and environment `environ` in a forked process; exit code, stdout and stderr as
    subprocess.run gives them."""
    if not _context:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(PRELOAD)
        _context.append(context)
    with tempfile.TemporaryDirectory(prefix="phiexport-cli-") as scratch:
        out, err = Path(scratch) / "stdout", Path(scratch) / "stderr"
        process = _context[0].Process(target=_run, args=(args, environ, os.getcwd(), str(out), str(err)))
        process.start()
        process.join(timeout)
        if process.is_alive():
            process.kill()
            process.join()
            raise subprocess.TimeoutExpired(["phiexport", *args], timeout)
        code = process.exitcode if process.exitcode is not None else -1
        stdout, stderr = out.read_text(errors="replace"), err.read_text(errors="replace")
    return subprocess.CompletedProcess(["phiexport", *args], code, stdout, stderr)


def _run(args: list[str], environ: dict[str, str], cwd: str, out: str, err: str) -> None:
    """In the forked process: the call's state, then the console entry point, exiting as `python -m` would."""
    import atexit
    import signal

    os.environ.clear()
    os.environ.update(environ)
    tempfile.tempdir = None  # gettempdir() reads TMPDIR again
    os.chdir(cwd)
    for fd, path in ((1, out), (2, err)):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(target, fd)
        os.close(target)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.argv = ["phiexport", *args]
    code = 0
    try:
        from phiexport.cli import main

        main(args)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
