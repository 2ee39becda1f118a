"""Does a package hold exactly what its manifest lists, byte for byte, and is the manifest signed as required?

Every problem is collected, not just the first, so one run names every changed, missing or extra file.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from phiexport.digest import sha256_file
from phiexport.errors import VerificationFailed
from phiexport.package.manifest import MANIFEST_NAME
from phiexport.package.signing import SIGNATURE_NAME, check_signature


@dataclass
class PackageCheck:
    package: Path
    files: int = 0
    bytes: int = 0
    signed: bool = False
    key_id: str | None = None
    trusted: bool = False
    problems: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {**asdict(self), "package": str(self.package.absolute())}


def safe_name(name: str) -> bool:
    """A manifest entry must name a file inside the package: relative, no `..`, no empty or `.` parts."""
    path = PurePosixPath(name)
    return (
        bool(name) and "\\" not in name and not path.is_absolute() and all(p not in ("", ".", "..") for p in path.parts)
    )


def check_package(package_dir: Path, *, pinned: Ed25519PublicKey | None = None) -> PackageCheck:
    """Compare every file with manifest.json (sha256, size, nothing missing or extra) and check the signature:
    required when a public key is pinned, checked against its own key otherwise."""
    check = PackageCheck(package_dir)
    try:
        listed = json.loads((package_dir / MANIFEST_NAME).read_text(encoding="utf-8"))["files"]
        if not isinstance(listed, dict):
            raise TypeError("files is not a mapping")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        check.problems.append(f"unreadable manifest: {MANIFEST_NAME} ({type(exc).__name__})")
        listed = None  # nothing to compare the files with; every one would look extra

    root = package_dir.resolve()
    for name, expected in sorted((listed or {}).items()):
        path = package_dir / name
        if not isinstance(expected, dict):
            check.problems.append(f"unreadable manifest: the entry for {name!r} is not a mapping")
        elif not safe_name(name):
            check.problems.append(f"unsafe path: {name!r} points outside the package")
        elif path.is_symlink() or (path.exists() and not path.is_file()):
            check.problems.append(f"not a regular file: {name}")
        elif not path.resolve().is_relative_to(root):  # a symlinked folder on the way
            check.problems.append(f"unsafe path: {name!r} points outside the package")
        elif not path.exists():
            check.problems.append(f"missing: {name}")
        elif (size := path.stat().st_size) != expected.get("size"):
            check.problems.append(f"changed: {name} ({size:,} bytes, manifest {expected.get('size')})")
        elif (digest := sha256_file(path)) != expected.get("sha256"):
            check.problems.append(
                f"changed: {name} (sha256 {digest[:12]}…, manifest {str(expected.get('sha256'))[:12]}…)"
            )
        else:
            check.files += 1
            check.bytes += size

    present = {p.relative_to(package_dir).as_posix() for p in package_dir.rglob("*") if not p.is_dir()}
    for name in sorted(present - set(present if listed is None else listed) - {MANIFEST_NAME, SIGNATURE_NAME}):
        check.problems.append(f"extra: {name} (not in the manifest)")

    check.signed = (package_dir / SIGNATURE_NAME).exists()
    if check.signed:
        info, problems = check_signature(package_dir, pinned)
        check.key_id, check.trusted = info.get("key_id"), bool(info.get("trusted"))
        check.problems += problems
    elif pinned is not None:
        check.problems.append(f"unsigned: no {SIGNATURE_NAME}, and a public key was given")
    return check


def require_intact(checks: list[PackageCheck]) -> None:
    """Raise VerificationFailed naming every problem of every package, if there is one."""
    lines = [f"{problem}  [{check.package}]" for check in checks for problem in check.problems]
    if lines:
        failed = sum(bool(check.problems) for check in checks)
        raise VerificationFailed(
            lines,
            f"{failed} of {len(checks)} packages do not match their manifest or signature",
            "do not use them: rebuild, or fetch them again from where they were published",
        )
