"""Ctrl-C and SIGTERM stop a build cleanly, even when a library swallows the KeyboardInterrupt they raise.

The handler records the signal as well as raising, and the pipeline re-checks the record at every stage boundary
and just before publishing, so a swallowed interrupt still stops the build and nothing is published.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_received: list[int] = []
_deferring = [False]


def _on_signal(signum: int, frame: Any) -> None:
    _received.append(signum)
    if not _deferring[0]:
        raise KeyboardInterrupt


@contextmanager
def interruptible() -> Iterator[None]:
    """Route SIGINT and SIGTERM into KeyboardInterrupt for the duration, then restore the previous handlers."""
    _received.clear()
    previous = {signum: signal.signal(signum, _on_signal) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextmanager
def deferred() -> Iterator[None]:
    """Record signals without raising inside the block, then raise if one came.

    For importing C extensions: a KeyboardInterrupt raised inside torch's or onnxruntime's initialisation made the
    process abort (SIGABRT) in about one interrupt in thirty, leaving the staging folder behind.
    """
    _deferring[0] = True
    try:
        yield
    finally:
        _deferring[0] = False
    raise_if_interrupted()


def was_interrupted() -> bool:
    """True once SIGINT or SIGTERM arrived: any failure after that is the interrupt's doing (a C extension can
    turn the KeyboardInterrupt into an ImportError when it lands inside the extension's initialisation)."""
    return bool(_received)


def raise_if_interrupted() -> None:
    if _received:
        raise KeyboardInterrupt
