"""Safetensors weights checked against config.json before any stage loads them.

transformers re-initializes a missing tensor at random with only a warning, and a NaN in the weights makes a
package whose every gate compares false: both would otherwise end in a package built from the wrong numbers.
Headers give names and shapes for free; one pass over the values finds non-finite numbers.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from phiexport.errors import SourceError
from phiexport.source.hf_dir import read_json

INDEX_NAME = "model.safetensors.index.json"
_REFETCH = "download the checkpoint's weights again (the file is truncated or corrupt)"


def check_weights(directory: Path) -> None:
    """Every tensor the architecture needs is present, shaped as config.json implies, and finite; none is left over."""
    found = _read_headers(directory)
    expected, ignored = _expected_shapes(directory)
    missing = sorted(set(expected) - set(found))
    if missing:
        raise SourceError(
            f"{len(missing)} tensor(s) that config.json needs are not in the weights, e.g. {missing[0]}",
            "download the checkpoint's weights again, or restore config.json from the same checkpoint",
        )
    for name, shape in expected.items():
        file_name, stored = found[name]
        if stored != shape:
            raise SourceError(
                f"tensor {name} in {file_name} has shape {list(stored)}; config.json implies {list(shape)}",
                "restore config.json and the weights from one and the same checkpoint",
            )
    extra = sorted(n for n in set(found) - set(expected) if not any(re.search(p, n) for p in ignored))
    if extra:
        raise SourceError(
            f"{len(extra)} tensor(s) in the weights that config.json does not describe, e.g. {extra[0]}",
            "restore config.json from the checkpoint these weights came from",
        )
    _check_finite(directory, {name: found[name][0] for name in expected})


def _weight_files(directory: Path) -> list[str]:
    """The shards named by the index when there is one (transformers reads only those), else every *.safetensors."""
    index = directory / INDEX_NAME
    if not index.is_file():
        return sorted(p.name for p in directory.glob("*.safetensors"))
    weight_map = read_json(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise SourceError(f"{index} has no weight_map", "restore the file from the original checkpoint")
    shards = sorted(set(map(str, weight_map.values())))
    if absent := [s for s in shards if not (directory / s).is_file()]:
        raise SourceError(f"shard {absent[0]} named in {INDEX_NAME} is missing", "download the missing shard")
    return shards


def _read_headers(directory: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Tensor name → (file, shape), from the headers only; a header that does not cover its file is refused."""
    from safetensors import SafetensorError, safe_open

    found: dict[str, tuple[str, tuple[int, ...]]] = {}
    for file_name in _weight_files(directory):
        try:
            with safe_open(directory / file_name, framework="pt") as handle:
                for name in handle.keys():  # noqa: SIM118 (a safe_open handle is not a dict)
                    found[name] = (file_name, tuple(handle.get_slice(name).get_shape()))
        except (SafetensorError, OSError) as exc:
            raise SourceError(f"{directory / file_name} is not a readable safetensors file ({exc})", _REFETCH) from None
    return found


def _expected_shapes(directory: Path) -> tuple[dict[str, tuple[int, ...]], list[str]]:
    """Parameter name → shape of the model config.json describes, built on the meta device (no memory, no weights),
    and the name patterns transformers itself ignores when they are left over in a checkpoint."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from phiexport.source.torch_model import quiet_transformers

    with quiet_transformers(), torch.device("meta"):
        model: Any = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(directory))
    # named_parameters lists a tied lm_head once, under the embedding's name, as checkpoints store it
    expected = {name: tuple(parameter.shape) for name, parameter in model.named_parameters()}
    ignored = [*(model._keys_to_ignore_on_load_unexpected or []), r"rotary_emb\.inv_freq$", r"^lm_head\.weight$"]
    return expected, ignored


def _check_finite(directory: Path, files: dict[str, str]) -> None:
    import torch
    from safetensors import safe_open

    for file_name in sorted(set(files.values())):
        with safe_open(directory / file_name, framework="pt") as handle:
            for name in sorted(n for n, f in files.items() if f == file_name):
                tensor = handle.get_tensor(name)
                if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                    raise SourceError(
                        f"tensor {name} in {file_name} holds NaN or infinite values",
                        "download the checkpoint again; if it persists, the checkpoint itself is broken",
                    )
