"""Weights checked against config.json before any stage loads them.

transformers re-initializes a missing tensor at random with only a warning, and a NaN in the weights makes a
package whose every gate compares false: both would otherwise end in a package built from the wrong numbers.
Safetensors headers give names and shapes for free; pickle weights (only with --allow-pickle) are opened
weights-only, as transformers opens them, so a pickle carrying code is refused here by name.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from phiexport.errors import SourceError
from phiexport.source.hf_dir import read_json

_REFETCH = "download the checkpoint's weights again (the file is truncated or corrupt)"


_DTYPE_BYTES = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2, "U16": 2}
CHUNK_BYTES = 64 << 20  # the finiteness pass reads this much at a time: a 1.2 GB embedding is never whole in memory


@dataclass(frozen=True)
class StoredTensor:
    file: str
    shape: tuple[int, ...]
    chunks: Callable[[], Iterator[Any]]  # the values in pieces, read only for the finiteness pass


def check_weights(directory: Path, *, pickled: bool = False) -> None:
    """Every tensor the architecture needs is present, shaped as config.json implies, and finite; none is left over.

    `pickled`: the weights are pytorch_model*.bin files (the caller allowed them), not safetensors.
    """
    stored = _open_pickles(directory) if pickled else _open_safetensors(directory)
    expected, ignored = _expected_shapes(directory)
    missing = sorted(set(expected) - set(stored))
    if missing:
        raise SourceError(
            f"{len(missing)} tensor(s) that config.json needs are not in the weights, e.g. {missing[0]}",
            "download the checkpoint's weights again, or restore config.json from the same checkpoint",
        )
    for name, shape in expected.items():
        if stored[name].shape != shape:
            raise SourceError(
                f"tensor {name} in {stored[name].file} has shape {list(stored[name].shape)}; "
                f"config.json implies {list(shape)}",
                "restore config.json and the weights from one and the same checkpoint",
            )
    extra = sorted(n for n in set(stored) - set(expected) if not any(re.search(p, n) for p in ignored))
    if extra:
        raise SourceError(
            f"{len(extra)} tensor(s) in the weights that config.json does not describe, e.g. {extra[0]}",
            "restore config.json from the checkpoint these weights came from",
        )
    _check_finite({name: stored[name] for name in expected})


def weight_files(directory: Path, pattern: str, index_name: str) -> list[str]:
    """The shards named by the index when there is one (transformers reads only those), else every match."""
    index = directory / index_name
    if not index.is_file():
        return sorted(p.name for p in directory.glob(pattern))
    weight_map = read_json(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise SourceError(f"{index} has no weight_map", "restore the file from the original checkpoint")
    shards = sorted(set(map(str, weight_map.values())))
    if absent := [s for s in shards if not (directory / s).is_file()]:
        raise SourceError(f"shard {absent[0]} named in {index_name} is missing", "download the missing shard")
    return shards


def _open_safetensors(directory: Path) -> dict[str, StoredTensor]:
    """Names and shapes from the headers; a header that does not cover its file is refused."""
    from safetensors import SafetensorError, safe_open

    def loader(path: Path, name: str, shape: tuple[int, ...], dtype: str) -> Callable[[], Iterator[Any]]:
        def chunks() -> Iterator[Any]:
            if not shape:
                with safe_open(path, framework="pt") as handle:
                    yield handle.get_tensor(name)
                return
            row_bytes = math.prod(shape[1:]) * _DTYPE_BYTES.get(dtype, 4)
            step = max(1, CHUNK_BYTES // max(row_bytes, 1))
            for start in range(0, shape[0], step):
                with safe_open(path, framework="pt") as handle:  # closing it unmaps the pages just read
                    yield handle.get_slice(name)[start : start + step]

        return chunks

    stored: dict[str, StoredTensor] = {}
    for file_name in weight_files(directory, "*.safetensors", "model.safetensors.index.json"):
        path = directory / file_name
        try:
            with safe_open(path, framework="pt") as handle:
                for name in handle.keys():  # noqa: SIM118 (a safe_open handle is not a dict)
                    piece = handle.get_slice(name)
                    shape = tuple(piece.get_shape())
                    stored[name] = StoredTensor(file_name, shape, loader(path, name, shape, piece.get_dtype()))
        except (SafetensorError, OSError) as exc:
            raise SourceError(f"{path} is not a readable safetensors file ({exc})", _REFETCH) from None
    return stored


def _open_pickles(directory: Path) -> dict[str, StoredTensor]:
    """torch.load weights-only (memory-mapped where the format allows): tensors and containers, never code."""
    import pickle

    import torch

    stored: dict[str, StoredTensor] = {}
    for file_name in weight_files(directory, "pytorch_model*.bin", "pytorch_model.bin.index.json"):
        path = directory / file_name
        try:
            try:
                state = torch.load(path, weights_only=True, mmap=True, map_location="cpu")
            except RuntimeError:  # the legacy (non-zip) format cannot be memory-mapped
                state = torch.load(path, weights_only=True, map_location="cpu")
        except pickle.UnpicklingError as exc:
            # torch's message wraps the one line that matters ("… unsupported GLOBAL posix.system …") in advice
            lines = [line for line in str(exc).splitlines() if "GLOBAL" in line or "Unsupported" in line]
            reason = f" ({lines[0].strip()})" if lines else ""
            raise SourceError(
                f"{path} holds more than tensors: the weights-only load refused it{reason}",
                "get safetensors weights for this model; never unpickle a file from an author you do not trust",
            ) from None
        except (RuntimeError, OSError, EOFError) as exc:
            raise SourceError(f"{path} is not a readable PyTorch weights file ({exc})", _REFETCH) from None
        if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
            raise SourceError(f"{path} is not a state dict of tensors", "get safetensors weights for this model")
        for name, tensor in state.items():
            stored[name] = StoredTensor(file_name, tuple(tensor.shape), _whole(tensor))
    return stored


def _whole(tensor: Any) -> Callable[[], Iterator[Any]]:
    def chunks() -> Iterator[Any]:
        yield tensor.detach()

    return chunks


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


def _check_finite(tensors: dict[str, StoredTensor]) -> None:
    import torch

    for name, stored in sorted(tensors.items()):
        if any(values.is_floating_point() and not bool(torch.isfinite(values).all()) for values in stored.chunks()):
            raise SourceError(
                f"tensor {name} in {stored.file} holds NaN or infinite values",
                "download the checkpoint again; if it persists, the checkpoint itself is broken",
            )
