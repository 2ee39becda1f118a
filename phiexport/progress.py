"""Stage timings, shown live with rich on a terminal, or recorded silently for --json and library use."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from phiexport.interrupts import raise_if_interrupted

T = TypeVar("T")
Track = Callable[
    [Iterable[T], int, str], Iterable[T]
]  # StageProgress.track's signature, for code that reports progress


class StageProgress:
    """Times each stage. With a console, shows a spinner per stage and a bar with ETA for long loops."""

    def __init__(self, console: Console | None = None):
        self.console = console
        self.timings: dict[str, float] = {}
        self._live: Progress | None = None
        if console is not None:
            self._live = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=console,
                transient=True,
            )

    @contextmanager
    def stage(self, name: str, detail: str = "") -> Iterator[None]:
        raise_if_interrupted()
        start = time.perf_counter()
        task = self._live.add_task(f"{name} {detail}".strip(), total=None) if self._live else None
        if self._live and not self._live.live.is_started:
            self._live.start()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            self.timings[name] = self.timings.get(name, 0.0) + elapsed
            if self._live is not None and task is not None:
                self._live.remove_task(task)
        raise_if_interrupted()
        if self.console is not None:
            # one line however narrow the terminal: a wrapped line splits a stage from its time in logs
            self.console.print(f"[green]✓[/green] {name} [dim]{detail}[/dim] {elapsed:.1f}s", soft_wrap=True)

    def track(self, items: Iterable[T], total: int, description: str) -> Iterator[T]:
        task = self._live.add_task(description, total=total) if self._live else None
        try:
            for item in items:
                yield item
                if self._live is not None and task is not None:
                    self._live.advance(task)
        finally:
            if self._live is not None and task is not None:
                self._live.remove_task(task)

    def close(self) -> None:
        if self._live is not None and self._live.live.is_started:
            self._live.stop()
