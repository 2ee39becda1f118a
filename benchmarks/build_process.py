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
    """`phiexport build ARGUMENTS --json` with PHIEXPORT_CACHE=cache: (its JSON result, wall s, peak RSS GB).

    Peak RSS is the build process's own (os.wait4); a failed build raises BuildFailed with the build's error.
    """
    command = [sys.executable, "-m", "phiexport", "build", *arguments, "--json"]
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        start = time.perf_counter()
        process = subprocess.Popen(
            command, stdout=stdout, stderr=stderr, env={**os.environ, "PHIEXPORT_CACHE": str(cache)}
        )
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
        stdout.seek(0)
        stderr.seek(0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise BuildFailed(stderr.read().strip().splitlines()[-1])
        return json.loads(stdout.read()), wall, usage.ru_maxrss / 1024**2  # KiB on Linux
