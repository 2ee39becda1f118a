"""keygen, sign and verify: a package is trusted only byte for byte as its signed manifest describes it."""

import json
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from phiexport.digest import describe_files
from phiexport.package.signing import SIGNATURE_NAME
from tests.conftest import error_lines, run_cli


def make_package(folder: Path) -> Path:
    """A package's shape without a model: files in two folders and a manifest that lists them."""
    (folder / "ctx").mkdir(parents=True)
    (folder / "model.onnx").write_bytes(bytes(range(256)) * 4)
    (folder / "genai_config.json").write_text('{"model": {}}\n')
    (folder / "ctx" / "x-elite.bin").write_bytes(b"\x00\x01" * 300)
    (folder / "manifest.json").write_text(json.dumps({"files": describe_files(folder)}, indent=2) + "\n")
    return folder


def rewrite_manifest(package: Path, change) -> None:
    manifest = json.loads((package / "manifest.json").read_text())
    change(manifest["files"])
    (package / "manifest.json").write_text(json.dumps(manifest))


def swap_for_a_symlink(package: Path) -> None:
    """The same bytes, kept outside the package: what it reads could change after verification."""
    outside = package.parent / "elsewhere.onnx"
    (package / "model.onnx").rename(outside)
    os.symlink(outside, package / "model.onnx")


@pytest.fixture
def keys(tmp_path) -> tuple[Path, Path]:
    result = run_cli("keygen", str(tmp_path / "keys" / "release.pem"), "--json")
    assert result.returncode == 0, result.stderr
    paths = json.loads(result.stdout)
    return Path(paths["private_key"]), Path(paths["public_key"])


def test_keygen_writes_a_private_key_only_its_owner_reads_and_never_overwrites(keys):
    private, public = keys
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" in private.read_bytes() and b"PUBLIC KEY" in public.read_bytes()
    again = run_cli("keygen", str(private))
    assert again.returncode == 2 and "already exists" in error_lines(again)[-1]


def test_a_signed_package_verifies_against_its_public_key(keys, tmp_path):
    private, public = keys
    package = make_package(tmp_path / "pkg")
    assert run_cli("sign", str(package), "--key", str(private)).returncode == 0
    result = run_cli("verify", str(package), "--public-key", str(public), "--json")
    assert result.returncode == 0, result.stderr
    (check,) = json.loads(result.stdout)["packages"]
    assert check["files"] == 3 and check["signed"] and check["trusted"] and check["problems"] == []
    assert check["bytes"] == sum(p.stat().st_size for p in package.rglob("*") if p.is_file()) - sum(
        (package / name).stat().st_size for name in ("manifest.json", SIGNATURE_NAME)
    )


def test_keys_come_from_environment_variables_in_ci(keys, tmp_path):
    private, public = keys
    package = make_package(tmp_path / "pkg")
    assert run_cli("sign", str(package), env={"PHIEXPORT_SIGNING_KEY": private.read_text()}).returncode == 0
    result = run_cli("verify", str(package), "--json", env={"PHIEXPORT_PUBLIC_KEY": public.read_text()})
    assert result.returncode == 0 and json.loads(result.stdout)["packages"][0]["trusted"]


def test_another_signer_is_refused_when_a_key_is_pinned(keys, tmp_path):
    private, _ = keys
    other = run_cli("keygen", str(tmp_path / "other.pem"))
    assert other.returncode == 0
    package = make_package(tmp_path / "pkg")
    assert run_cli("sign", str(package), "--key", str(tmp_path / "other.pem")).returncode == 0
    unpinned = run_cli("verify", str(package))
    assert unpinned.returncode == 0 and "not pinned" in unpinned.stdout  # intact, but says who is unknown
    pinned = run_cli("verify", str(package), "--public-key", str(private.with_name("release.pem.pub")))
    assert pinned.returncode == 5
    assert error_lines(pinned)[0].startswith("untrusted signer: key ")


def test_an_unsigned_package_fails_when_a_signature_is_required(keys, tmp_path):
    _, public = keys
    package = make_package(tmp_path / "pkg")
    assert run_cli("verify", str(package)).returncode == 0  # integrity alone
    result = run_cli("verify", str(package), "--public-key", str(public))
    assert result.returncode == 5 and error_lines(result)[0].startswith(f"unsigned: no {SIGNATURE_NAME}")


@pytest.mark.parametrize(
    ("tamper", "problem"),
    [
        (lambda p: (p / "notes.txt").write_text("hi"), "extra: notes.txt"),
        (lambda p: (p / "ctx" / "x-elite.bin").unlink(), "missing: ctx/x-elite.bin"),
        (lambda p: (p / "model.onnx").write_bytes(b"short"), "changed: model.onnx (5 bytes, manifest 1024)"),
        (lambda p: os.symlink("/etc/passwd", p / "genai_config.json.tmp"), "extra: genai_config.json.tmp"),
        (swap_for_a_symlink, "not a regular file: model.onnx"),
        (lambda p: rewrite_manifest(p, lambda f: f.update({"../escape": f["model.onnx"]})), "unsafe path: '../escape'"),
        (lambda p: rewrite_manifest(p, lambda f: f.update({"/etc/passwd": f["model.onnx"]})), "unsafe path: '/etc/pa"),
        (lambda p: (p / "manifest.json").write_text("{"), "unreadable manifest: manifest.json"),
    ],
    ids=[
        "extra-file",
        "missing-file",
        "truncated-file",
        "extra-symlink",
        "listed-symlink",
        "dotdot-path",
        "absolute-path",
        "bad-manifest",
    ],
)
def test_verify_names_what_differs_and_exits_5(tamper, problem, tmp_path):
    package = make_package(tmp_path / "pkg")
    tamper(package)
    result = run_cli("verify", str(package), "--json")
    assert result.returncode == 5
    details = json.loads(result.stdout)["error"]["details"]
    assert any(line.startswith(problem) for line in details), details
    lines = error_lines(result)
    assert lines[-1].startswith("error: 1 of 1 packages do not match their manifest or signature — fix: ")


def test_sign_refuses_a_package_that_no_longer_matches_its_manifest(keys, tmp_path):
    private, _ = keys
    package = make_package(tmp_path / "pkg")
    (package / "model.onnx").write_bytes(b"x" * 1024)
    result = run_cli("sign", str(package), "--key", str(private))
    assert result.returncode == 5 and not (package / SIGNATURE_NAME).exists()


def test_bad_keys_are_named(tmp_path):
    package = make_package(tmp_path / "pkg")
    ec_key = tmp_path / "ec.pem"
    ec_key.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a key")
    cases = [
        (["sign", str(package)], "no signing key"),
        (["sign", str(package), "--key", str(tmp_path / "absent.pem")], "cannot read the signing key"),
        (["sign", str(package), "--key", str(garbage)], "holds no PEM private key"),
        (["sign", str(package), "--key", str(ec_key)], "is not ed25519"),
        (["verify", str(package), "--public-key", str(garbage)], "holds no PEM public key"),
        (["build", "--key", str(ec_key)], "--key is only used with --sign"),
        (["build", "--sign", "-o", str(tmp_path / "out")], "no signing key"),
    ]
    for args, cause in cases:
        result = run_cli(*args, env={"PHIEXPORT_SIGNING_KEY": "", "PHIEXPORT_PUBLIC_KEY": ""})
        lines = error_lines(result)
        assert result.returncode == 2 and len(lines) == 1 and cause in lines[0], (args, result.stderr)
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def signed_build(mini_phi4, tmp_path_factory) -> tuple[Path, Path]:
    """`build --sign` of a miniature Phi-4-mini for cpu and npu, and the public key that should verify it."""
    folder = tmp_path_factory.mktemp("signed")
    assert run_cli("keygen", str(folder / "key.pem")).returncode == 0
    output = folder / "out"
    args = ("--target", "cpu", "--target", "npu", "--context-length", "128", "--eval-sequences", "2")
    result = run_cli("build", str(mini_phi4), *args, "-o", str(output), "--sign", "--key", str(folder / "key.pem"))
    assert result.returncode == 0, result.stderr
    return output, folder / "key.pem.pub"


def flip_one_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.slow
def test_build_sign_then_verify_catches_one_flipped_byte_in_every_file(signed_build):
    output, public = signed_build
    result = run_cli("verify", str(output), "--public-key", str(public), "--json")
    assert result.returncode == 0, result.stderr
    assert [check["trusted"] for check in json.loads(result.stdout)["packages"]] == [True, True]

    files = sorted(p for p in output.rglob("*") if p.is_file())
    kinds = {p.name if p.name in ("manifest.json", SIGNATURE_NAME) else "".join(p.suffixes) for p in files}
    assert {".onnx", ".data", ".json", ".bin", SIGNATURE_NAME, "manifest.json"} <= kinds, kinds
    for path in files:
        original = path.read_bytes()
        flip_one_byte(path, len(original) // 2)  # the middle: inside the weights, not only a header
        try:
            flipped = run_cli("verify", str(output), "--public-key", str(public), "--json")
        finally:
            path.write_bytes(original)
        assert flipped.returncode == 5, path
        details = json.loads(flipped.stdout)["error"]["details"]
        if path.name == "manifest.json":  # unparseable now, or parseable and no longer what was signed
            assert details[-1].startswith(f"bad signature: {SIGNATURE_NAME} does not sign"), details
        elif path.name == SIGNATURE_NAME:
            assert details == [details[0]] and details[0].startswith(("bad signature", "unreadable signature")), details
        else:
            name = path.relative_to(output).as_posix().split("/", 1)[1]
            assert details == [details[0]] and details[0].startswith(f"changed: {name} (sha256 "), details
    assert run_cli("verify", str(output), "--public-key", str(public)).returncode == 0
