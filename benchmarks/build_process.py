"""Run `phiexport build` in its own process, as a user does, and measure it (shared by the benchmark scripts)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


class BuildFailed(Exception):
    """The build exited non-zero; the message is its one-line error."""


def run_build(arguments: list[str], cache: Path) -> tuple[dict, float, float]:
    """`phiexport build ARGUMENTS --json` with PHIEXPORT_CACHE=cache: (its JSON result, wall s, peak RSS GiB).

    A failed build raises BuildFailed with the build's error.
    """
    command = [sys.executable, "-m", "phiexport", "build", *arguments, "--json"]
    stdout, _, wall, peak_gb = run_measured(command, {"PHIEXPORT_CACHE": str(cache)})
    return json.loads(stdout), wall, peak_gb


def run_measured(
    command: list[str], env: dict[str, str] | None = None, cwd: Path | None = None
) -> tuple[str, str, float, float]:
    """Run `command` in its own process (in `cwd`): (stdout, stderr, wall s, peak RSS GiB of it, from os.wait4).

    A non-zero exit raises BuildFailed with the last line of stderr.
    """
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=stdout, stderr=stderr, env={**os.environ, **(env or {})}, cwd=cwd)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
        stdout.seek(0)
        stderr.seek(0)
        out, err = stdout.read(), stderr.read()
        if os.waitstatus_to_exitcode(status) != 0:
            raise BuildFailed((err.strip().splitlines() or ["(no output)"])[-1])
        return out, err, wall, usage.ru_maxrss / 1024**2  # KiB on Linux
