"""Atomic output: a build writes into a hidden sibling directory that is renamed into place only on success.

The staging folder is private while the build runs (mkdtemp: mode 700); what is published gets the modes the user's
umask gives new files, so a package built into a shared folder is readable by whoever the umask lets read it."""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from phiexport.errors import GateFailed, PhiexportError, UsageError
from phiexport.interrupts import raise_if_interrupted


def check_output(output: Path, *, force: bool) -> None:
    """Fail before any work if the output exists (without force) or its folder cannot be written."""
    if output.exists() and not force:
        raise UsageError(f"{output} already exists", "pass --force to replace it, or choose another --output")
    existing = _existing(output.parent)
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write into {existing}", "choose an --output in a folder you can write to")


def _remove_abandoned_staging(output: Path) -> None:
    """Delete staging folders left by builds that were killed outright (SIGKILL, power loss) for this output."""
    for leftover in output.parent.glob(f".{output.name}.partial-*"):
        pid = leftover.name.removeprefix(f".{output.name}.partial-").split("-")[0]
        if pid.isdigit() and not _process_alive(int(pid)):
            shutil.rmtree(leftover, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def rejected_path(output: Path) -> Path:
    """Where a build whose packages failed their gates is kept for inspection, never at `output` itself."""
    return output.with_name(f"{output.name}.rejected")


@contextmanager
def staged_output(output: Path, *, force: bool) -> Iterator[Path]:
    """Yield an empty staging directory; on clean exit it becomes `output`, on any exception it disappears,
    except that a build failing its gates becomes `rejected_path(output)` (replacing an older one).

    With `force`, an existing output is swapped out only after the new one is complete.
    """
    check_output(output, force=force)
    output.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_staging(output)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.partial-{os.getpid()}-", dir=output.parent))
    try:
        yield staging
        raise_if_interrupted()
        _umask_modes(staging)
        if force:
            _swap_into(staging, output)
        else:
            _publish_new(staging, output)
    except GateFailed:
        _umask_modes(staging)
        _swap_into(staging, rejected_path(output))
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _publish_new(staging: Path, output: Path) -> None:
    """Rename into place unless another build published `output` meanwhile (the rename is refused atomically for a
    non-empty folder): then keep this build's work beside it, under a name the error gives."""
    try:
        os.rename(staging, output)
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
            raise
        kept = output.with_name(f"{output.name}.unpublished-{os.getpid()}")
        os.rename(staging, kept)
        raise UsageError(
            f"{output} appeared while this build ran (another build published it); this build is kept in {kept}",
            f"compare the two, then move {kept.name} into place or rerun with --force",
        ) from exc


def _umask_modes(root: Path) -> None:
    """Give every published folder and file the mode a new one gets under the current umask (folders 777, files
    666, less the umask), instead of the staging folder's private 700 and the 600 some writers leave."""
    umask = os.umask(0)
    os.umask(umask)
    for folder, _subfolders, files in os.walk(root):
        os.chmod(folder, 0o777 & ~umask)
        for name in files:
            path = Path(folder) / name
            if not path.is_symlink():
                os.chmod(path, 0o666 & ~umask)


def _swap_into(staging: Path, destination: Path) -> None:
    if destination.exists():
        retired = Path(tempfile.mkdtemp(prefix=f".{destination.name}.old-", dir=destination.parent))
        os.replace(destination, retired / destination.name)
        os.replace(staging, destination)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(staging, destination)


@contextmanager
def full_disk_named(folders: dict[str, Path]) -> Iterator[None]:
    """Turn "no space left on device" into an error naming the folder (by role) on the fullest disk.

    Enter it inside the staging context: free space is measured before the staged files are deleted.
    """
    try:
        yield
    except Exception as exc:
        if not _is_disk_full(exc):
            raise
        usage = {role: shutil.disk_usage(_existing(folder)) for role, folder in folders.items()}
        role = min(usage, key=lambda name: usage[name].free)
        free, total = usage[role].free / 2**20, usage[role].total / 2**20
        raise PhiexportError(
            f"no space left on device writing into {folders[role]} ({role}: {free:.1f} of {total:.1f} MiB free)",
            "free space there, or build on a disk with room (--output; TMPDIR for scratch)",
        ) from exc


_SHORT_WRITE = re.compile(r"\d+ requested and \d+ written")


def _existing(folder: Path) -> Path:
    return next(p for p in (folder, *folder.parents) if p.exists())


def _is_disk_full(exc: BaseException | None) -> bool:
    """ENOSPC from Python; from native code (onnxruntime) that reports it only in its message; or numpy's `tofile`
    (how onnx-ir writes tensors), which reports a short write as "N requested and M written" without an errno."""
    while exc is not None:
        message = str(exc)
        if (
            (isinstance(exc, OSError) and exc.errno == errno.ENOSPC)
            or "No space left on device" in message
            or (isinstance(exc, OSError) and _SHORT_WRITE.search(message))
        ):
            return True
        exc = exc.__cause__ or exc.__context__
    return False
