"""Send everything a library prints (Python and native, stdout and stderr) to a log file."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def output_to_log(log_path: Path) -> Iterator[None]:
    """Redirect file descriptors 1 and 2 (so C++ and tqdm output too) into `log_path`, appending.

    phiexport's own console writes to a duplicate of the original stderr, so progress stays visible.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with log_path.open("ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
