"""ed25519 signatures over a package's manifest.json: the manifest holds every other file's sha256 and size, so one
signature covers the whole package.

Keys are PEM files as `openssl genpkey -algorithm ed25519` writes them (or `phiexport keygen`); a CI job passes the
private key's PEM text in $PHIEXPORT_SIGNING_KEY and the public key's in $PHIEXPORT_PUBLIC_KEY instead of files.
`sign_package(package_dir, load_private_key(pem_path))` signs one package and returns the signature record, whose
`key_id` names the key.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from phiexport.errors import UsageError
from phiexport.package.manifest import MANIFEST_NAME

SIGNATURE_NAME = "manifest.json.sig"
SIGNATURE_SCHEMA = "phiexport.signature/1"
PRIVATE_KEY_ENV = "PHIEXPORT_SIGNING_KEY"
PUBLIC_KEY_ENV = "PHIEXPORT_PUBLIC_KEY"


def key_id(public_key: Ed25519PublicKey) -> str:
    """First 16 hex digits of the sha256 of the raw 32-byte public key: short enough to read, long enough to pin."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate_key_pair(private_path: Path) -> tuple[Path, str]:
    """Write a new private key (PEM, readable by its owner only) and `<private_path>.pub` beside it; return the
    public key's path and key id."""
    public_path = private_path.with_name(private_path.name + ".pub")
    for path in (private_path, public_path):
        if path.exists():
            raise UsageError(f"{path} already exists", "choose another key file name; keys are never overwritten")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    private_path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(private_pem)
    public_path.write_bytes(public_pem)
    return public_path, key_id(key.public_key())


def _pem(path: Path | None, env: str, what: str, flag: str) -> tuple[bytes, str]:
    if path is not None:
        try:
            return path.read_bytes(), str(path)
        except OSError as exc:
            raise UsageError(f"cannot read the {what} {path}: {exc.strerror}", f"check the {flag} path") from None
    if text := os.environ.get(env):
        return text.encode(), f"${env}"
    raise UsageError(f"no {what}", f"pass {flag} FILE or put the key's PEM text in ${env}")


def load_private_key(path: Path | None) -> Ed25519PrivateKey:
    data, origin = _pem(path, PRIVATE_KEY_ENV, "signing key", "--key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise UsageError(
            f"the signing key in {origin} is encrypted", "give phiexport an unencrypted copy (openssl pkey -in KEY)"
        ) from None
    except ValueError:
        raise UsageError(
            f"{origin} holds no PEM private key", "create one with `phiexport keygen KEY` or openssl genpkey"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise UsageError(f"the key in {origin} is not ed25519", "create one with `phiexport keygen KEY`")
    return key


def load_public_key(path: Path | None) -> Ed25519PublicKey | None:
    """The pinned public key from `path` or $PHIEXPORT_PUBLIC_KEY; None when neither is given."""
    if path is None and not os.environ.get(PUBLIC_KEY_ENV):
        return None
    data, origin = _pem(path, PUBLIC_KEY_ENV, "public key", "--public-key")
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        raise UsageError(
            f"{origin} holds no PEM public key", "pass the .pub file that `phiexport keygen` wrote"
        ) from None
    if not isinstance(key, Ed25519PublicKey):
        raise UsageError(f"the key in {origin} is not ed25519", "pass the .pub file that `phiexport keygen` wrote")
    return key


def sign_package(package_dir: Path, key: Ed25519PrivateKey) -> dict[str, Any]:
    """Write SIGNATURE_NAME: the signature of manifest.json's exact bytes, and the public key that checks it."""
    manifest = (package_dir / MANIFEST_NAME).read_bytes()
    public_key = key.public_key()
    signature = {
        "schema": SIGNATURE_SCHEMA,
        "algorithm": "ed25519",
        "key_id": key_id(public_key),
        "public_key": base64.b64encode(
            public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        ).decode(),
        "manifest_sha256": hashlib.sha256(manifest).hexdigest(),
        "signature": base64.b64encode(key.sign(manifest)).decode(),
    }
    (package_dir / SIGNATURE_NAME).write_text(json.dumps(signature, indent=2) + "\n", encoding="utf-8")
    return signature


def check_signature(package_dir: Path, pinned: Ed25519PublicKey | None) -> tuple[dict[str, Any], list[str]]:
    """(what the signature says, problems): the signature must match manifest.json's bytes, and when a public key is
    pinned, it must be that key's."""
    path = package_dir / SIGNATURE_NAME
    try:
        signature = json.loads(path.read_text(encoding="utf-8"))
        public_key = Ed25519PublicKey.from_public_bytes(base64.b64decode(signature["public_key"], validate=True))
        signed = base64.b64decode(signature["signature"], validate=True)
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        return {}, [f"unreadable signature: {SIGNATURE_NAME} ({type(exc).__name__})"]
    info = {"key_id": key_id(public_key), "trusted": False}
    try:
        public_key.verify(signed, (package_dir / MANIFEST_NAME).read_bytes())
    except InvalidSignature:
        return info, [f"bad signature: {SIGNATURE_NAME} does not sign this {MANIFEST_NAME} (key {info['key_id']})"]
    if pinned is not None:
        if key_id(pinned) != info["key_id"]:
            return info, [f"untrusted signer: key {info['key_id']}, not the pinned key {key_id(pinned)}"]
        info["trusted"] = True
    return info, []
