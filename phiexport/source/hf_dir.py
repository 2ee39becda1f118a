"""Checks on a local Hugging Face checkpoint directory, made before any weight is read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from phiexport.architectures import Architecture, architecture_for
from phiexport.errors import SourceError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
# What the builder and the reference read from a checkpoint directory; these files are digested into the manifest.
SOURCE_SUFFIXES = (".json", ".safetensors", ".model", ".jinja", ".txt", ".tiktoken")


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SourceError(
            f"no {path.name} in {path.parent}",
            "pass a Hugging Face model directory (config.json, *.safetensors, tokenizer.json)",
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SourceError(
            f"{path} is not valid JSON ({exc})", "restore the file from the original checkpoint"
        ) from None
    if not isinstance(data, dict):
        raise SourceError(f"{path} is not a JSON object", "restore the file from the original checkpoint")
    return data


def check_hf_dir(
    directory: Path, *, allow_pickle: bool, trust_remote_code: bool
) -> tuple[dict[str, Any], Architecture, list[str]]:
    """Config, architecture and the relative names of the files the build will read.

    Refuses pickle weights unless `allow_pickle` (unpickling runs arbitrary code) and a tokenizer that needs the
    checkpoint's own code unless `trust_remote_code`. A model-level `auto_map` is harmless: supported
    architectures load through transformers' own classes and the checkpoint's code is never imported.
    """
    if not any(directory.iterdir()):
        raise SourceError(
            f"{directory} is empty", "pass a Hugging Face model directory (config.json, *.safetensors, tokenizer.json)"
        )
    config = read_json(directory / "config.json")
    architecture = architecture_for(config)

    names = sorted(p.name for p in directory.iterdir() if p.is_file() and not p.name.startswith("."))
    safetensors = [n for n in names if n.endswith(".safetensors")]
    pickles = [n for n in names if n.endswith(PICKLE_SUFFIXES)]
    if not safetensors:
        if not pickles:
            raise SourceError(
                f"no weights in {directory}: no *.safetensors file", "download the model's safetensors files"
            )
        if not allow_pickle:
            raise SourceError(
                f"the weights in {directory} are pickle files ({pickles[0]}); unpickling can run arbitrary code",
                "convert them to safetensors, or pass --allow-pickle to load them weights-only",
            )
    if not any(n in names for n in TOKENIZER_FILES):
        raise SourceError(
            f"no tokenizer in {directory} (tokenizer.json or tokenizer.model)",
            "copy the tokenizer files from the original model",
        )
    tokenizer_config = directory / "tokenizer_config.json"
    if not trust_remote_code and tokenizer_config.is_file() and "auto_map" in read_json(tokenizer_config):
        raise SourceError(
            "the tokenizer needs the checkpoint's own Python code (auto_map in tokenizer_config.json)",
            "pass --trust-remote-code if you trust the checkpoint's author",
        )

    used = [n for n in names if n.endswith(SOURCE_SUFFIXES) or (allow_pickle and n in pickles)]
    return config, architecture, used
