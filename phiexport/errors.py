"""Errors a user can act on: each names the cause and the fix, and maps to an exit code.

Exit codes (documented in README.md):
  1  the build itself failed (builder crash, package that does not load)
  2  usage: a bad flag, recipe key or value, a missing path, an output that already exists
  3  the source checkpoint cannot be used (unsupported architecture, corrupt or unsafe files, not reachable)
  4  a package failed its accuracy gates (a build is withheld in `<output>.rejected/`; eval writes its report)
  5  a package does not match its manifest or signature (`phiexport verify`)
  130 interrupted (Ctrl-C or SIGTERM)
"""

from __future__ import annotations


class PhiexportError(Exception):
    """A failure reported as one line: `<cause> — fix: <fix>`, after any `lines` of detail."""

    exit_code = 1
    lines: tuple[str, ...] | list[str] = ()

    def __init__(self, cause: str, fix: str):
        super().__init__(cause, fix)
        self.cause = cause
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.cause} — fix: {self.fix}"


class UsageError(PhiexportError):
    """The command line or recipe asks for something invalid."""

    exit_code = 2


class SourceError(PhiexportError):
    """The checkpoint cannot be found, read, trusted or exported."""

    exit_code = 3


class BuildError(PhiexportError):
    """A stage failed on valid input; the log named in the fix has the details."""

    exit_code = 1


class GateFailed(PhiexportError):
    """Packages measured worse than their gates allow; `lines` are the failed gates, `cause` says what follows."""

    exit_code = 4

    def __init__(self, lines: list[str], cause: str, fix: str):
        super().__init__(cause, fix)
        self.lines = lines


class Interrupted(PhiexportError):
    """A command was stopped by a signal: a build publishes nothing, an evaluation keeps what it scored."""

    exit_code = 130


class VerificationFailed(PhiexportError):
    """A package differs from what its manifest and signature promise; `lines` name each file or check that failed."""

    exit_code = 5

    def __init__(self, lines: list[str], cause: str, fix: str):
        super().__init__(cause, fix)
        self.lines = lines
