"""`phiexport keygen`, `sign` and `verify`: ed25519 signatures over manifest.json, and every file checked against it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from phiexport.cli.common import DebugFlag, JsonFlag, KeyOption, reported_errors, stdout_console

Packages = Annotated[list[Path], typer.Argument(help="Package folders (packages/<recipe>/cpu) or whole build outputs.")]


def keygen(
    key: Annotated[Path, typer.Argument(help="Where to write the private key; the public key goes to KEY.pub.")],
    as_json: JsonFlag = False,
    debug: DebugFlag = False,
) -> None:
    """Create an ed25519 key pair for signing packages (the private key readable by its owner only)."""
    with reported_errors(as_json, debug):
        from phiexport.package.signing import generate_key_pair

        public, identity = generate_key_pair(key)
        if as_json:
            print(
                json.dumps(
                    {"private_key": str(key.absolute()), "public_key": str(public.absolute()), "key_id": identity}
                )
            )
            return
        stdout_console().print(f"private key {key} (keep it secret), public key {public}, key id {identity}")


def sign(packages: Packages, key: KeyOption = None, as_json: JsonFlag = False, debug: DebugFlag = False) -> None:
    """Sign packages: each must first match its manifest, then manifest.json gets an ed25519 signature beside it."""
    with reported_errors(as_json, debug):
        from phiexport.package.integrity import check_package, require_intact
        from phiexport.package.manifest import package_dirs
        from phiexport.package.signing import load_private_key, sign_package

        private_key = load_private_key(key)
        folders = package_dirs(packages)
        require_intact([check_package(folder) for folder in folders])
        signatures = {str(folder.absolute()): sign_package(folder, private_key)["key_id"] for folder in folders}
        if as_json:
            print(json.dumps({"signed": signatures}))
            return
        for folder, identity in signatures.items():
            stdout_console().print(f"signed {folder} (key {identity})")


def verify(
    packages: Packages,
    public_key: Annotated[
        Path | None,
        typer.Option(
            help="Require a signature by this ed25519 public key (PEM) [$PHIEXPORT_PUBLIC_KEY holds the PEM]."
        ),
    ] = None,
    as_json: JsonFlag = False,
    debug: DebugFlag = False,
) -> None:
    """Check every file of each package against manifest.json (sha256, size, none missing or extra) and the signature.

    Without a public key a signature is checked against the key it carries (integrity, not identity). Any problem
    is printed, one per line, and the exit code is 5."""
    with reported_errors(as_json, debug):
        from phiexport.package.integrity import check_package, require_intact
        from phiexport.package.manifest import package_dirs
        from phiexport.package.signing import load_public_key

        pinned = load_public_key(public_key)
        checks = [check_package(folder, pinned=pinned) for folder in package_dirs(packages)]
        require_intact(checks)
        if as_json:
            print(json.dumps({"packages": [check.summary() for check in checks]}, indent=2))
            return
        console = stdout_console()
        for check in checks:
            if check.trusted:
                signer = f"signed by the given key {check.key_id}"
            elif check.signed:
                signer = f"signed by key {check.key_id} (not pinned: pass --public-key to check who signed)"
            else:
                signer = "unsigned"
            console.print(f"✓ {check.package}: {check.files} files, {check.bytes:,} bytes match the manifest; {signer}")
