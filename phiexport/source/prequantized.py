"""GPTQ and AWQ safetensors checkpoints: their packed integers as BlockWeights, and an fp32 copy of the model.

The fp32 copy (every packed linear dequantized, the rest widened) is what the reference and the exporter read, as a
GGUF's dequantized directory is; it is cached by the checkpoint's digest. The integers are carried into the CPU
package by quantize/imported.py.

Layouts (int32 words, low bits first): GPTQ packs `qweight` along the input dimension (`[K·bits/32, N]`) and `qzeros`
along the output (`[groups, N·bits/32]`), storing each zero point minus one unless `checkpoint_format` is `gptq_v2`;
`g_idx` names each input's group. AWQ's GEMM layout packs both along the output, 8 codes a word in the order
0, 2, 4, 6, 1, 3, 5, 7. Both dequantize as `scale · (code − zero)`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from phiexport.errors import SourceError
from phiexport.quantize.gguf_blocks import BlockWeight
from phiexport.recipe import BLOCK_SIZES

METHODS = ("gptq", "awq")
_AWQ_ORDER = np.array([0, 2, 4, 6, 1, 3, 5, 7])
_PACKED = (".qweight", ".qzeros", ".scales", ".g_idx")


def quantization_config(config: dict[str, Any]) -> dict[str, Any] | None:
    """config.json's quantization_config when it describes a GPTQ or AWQ checkpoint phiexport reads, else None."""
    quant = config.get("quantization_config")
    if not isinstance(quant, dict) or quant.get("quant_method") not in METHODS:
        return None
    method, bits = quant["quant_method"], quant.get("bits", 4)
    if method == "awq" and (bits != 4 or quant.get("version", "gemm").lower() != "gemm"):
        raise SourceError(f"AWQ {quant.get('version')} at {bits} bits is not supported", "use a 4-bit AWQ GEMM export")
    if method == "gptq" and bits not in (4, 8):
        raise SourceError(f"GPTQ at {bits} bits is not supported", "use a 4- or 8-bit GPTQ checkpoint")
    return quant


def linear_weights(
    tensors: dict[str, np.ndarray], quant: dict[str, Any]
) -> tuple[dict[str, BlockWeight], dict[str, np.ndarray]]:
    """The packed linears among `tensors` (one safetensors file's) by module name, and each one's input groups
    (`g_idx`: GPTQ's act-order puts an input in any group)."""
    weights, groups = {}, {}
    for name in tensors:
        if name.endswith(".qweight"):
            module = name.removesuffix(".qweight")
            weights[module], groups[module] = _unpack(tensors, module, quant)
    return weights, groups


def dequantize(weight: BlockWeight, groups: np.ndarray) -> np.ndarray:
    """float32 `[N, K]`, each input in its own group (which `weight`'s blocks hold only when groups are in order)."""
    return (weight.codes * weight.scales[:, groups] + weight.mins[:, groups]).astype(np.float32)


def in_order(weight: BlockWeight, groups: np.ndarray) -> bool:
    """True when every input's group is its block: the weight maps onto MatMulNBits exactly."""
    return bool(np.array_equal(groups, np.arange(groups.size) // weight.block_size))


def write_fp32_copy(source: Path, output: Path, quant: dict[str, Any]) -> None:
    """`source` with every packed linear dequantized to fp32 and quantization_config removed, into `output`."""
    from safetensors.numpy import load_file, save_file

    for path in source.iterdir():
        if path.is_file() and not path.name.endswith(".safetensors") and path.name != "config.json":
            shutil.copy2(path, output / path.name)
    config = json.loads((source / "config.json").read_text(encoding="utf-8"))
    config.pop("quantization_config", None)
    config["torch_dtype"] = "float32"
    (output / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    renamed: dict[str, str] = {}
    for path in sorted(source.glob("*.safetensors")):
        tensors = load_file(path)
        weights, groups = linear_weights(tensors, quant)
        out = {name: value.astype(np.float32) for name, value in tensors.items() if not name.endswith(_PACKED)}
        for module, weight in weights.items():
            out[f"{module}.weight"] = dequantize(weight, groups[module])
            renamed.update({f"{module}{suffix}": f"{module}.weight" for suffix in _PACKED})
        save_file(out, output / path.name, metadata={"format": "pt"})
    index = source / "model.safetensors.index.json"
    if index.is_file():
        data = json.loads(index.read_text(encoding="utf-8"))
        data["weight_map"] = {renamed.get(name, name): shard for name, shard in data["weight_map"].items()}
        (output / index.name).write_text(json.dumps(data, indent=2), encoding="utf-8")


def _unpack(tensors: dict[str, np.ndarray], module: str, quant: dict[str, Any]) -> tuple[BlockWeight, np.ndarray]:
    bits = int(quant.get("bits", 4))
    scales = tensors[f"{module}.scales"].astype(np.float32)  # [groups, N]
    if quant["quant_method"] == "awq":
        codes = _unpack_awq(tensors[f"{module}.qweight"])  # [K, N]
        zeros = _unpack_awq(tensors[f"{module}.qzeros"])
    else:
        codes = _unpack_words(tensors[f"{module}.qweight"].T, bits).T
        zeros = _unpack_words(tensors[f"{module}.qzeros"], bits)
        if quant.get("checkpoint_format", "gptq") != "gptq_v2":
            zeros = (zeros + 1) & ((1 << bits) - 1)  # v1 stores each zero point minus one
    width, count = codes.shape[0], scales.shape[0]
    group = int(quant.get("group_size", -1))
    group = width if group <= 0 else group
    default = np.arange(width) // group
    groups = tensors[f"{module}.g_idx"].astype(np.int64) if f"{module}.g_idx" in tensors else default
    if group == width:  # one group a row: repeated over blocks MatMulNBits takes
        block = next((size for size in reversed(BLOCK_SIZES) if width % size == 0), None)
        if block is None:
            raise SourceError(f"{module}: {width} inputs split into no MatMulNBits block size", "use --requantize")
        repeat = width // block
        scales, zeros, groups, group = np.repeat(scales, repeat, 0), np.repeat(zeros, repeat, 0), default, block
    if group not in BLOCK_SIZES or width % group or count != width // group:
        raise SourceError(
            f"{module}: group size {group} over {width} inputs is no MatMulNBits block layout",
            "use --requantize to quantize the dequantized weights again",
        )
    weight = BlockWeight(
        bits=bits,
        block_size=group,
        codes=np.ascontiguousarray(codes.T.astype(np.uint8)),
        scales=np.ascontiguousarray(scales.T),
        mins=np.ascontiguousarray((-zeros.astype(np.float32) * scales).T),
    )
    return weight, groups


def _unpack_words(words: np.ndarray, bits: int) -> np.ndarray:
    """int32 `[rows, n]` holding 32/bits codes a word, low bits first → `[rows, n · 32/bits]`."""
    unsigned = words.astype(np.int64) & 0xFFFFFFFF
    shifts = np.arange(0, 32, bits)
    return ((unsigned[..., None] >> shifts) & ((1 << bits) - 1)).reshape(words.shape[0], -1)


def _unpack_awq(words: np.ndarray) -> np.ndarray:
    """AWQ's `[rows, n/8]` words → `[rows, n]` in column order (word nibble i holds column 8·m + order[i])."""
    nibbles = _unpack_words(words, 4).reshape(words.shape[0], -1, 8)
    return nibbles[..., np.argsort(_AWQ_ORDER)].reshape(words.shape[0], -1)
