"""A checkpoint's safetensors tensors as zero-copy views of the mapped files, for reading a piece at a time.

safetensors' `safe_open` copies a whole tensor (or a contiguous slice) into new memory. The streamed reference
needs a few hundred scattered rows of a 1.2 GB embedding and the lm_head in vocabulary chunks, so the files are
mapped here (the format is an 8-byte header length, a JSON header, then raw little-endian tensors) and each piece's
pages are handed back once it has been copied.
"""

from __future__ import annotations

import json
import math
import mmap
import struct
from pathlib import Path
from typing import Any

from phiexport.errors import SourceError
from phiexport.source.weights import weight_files

_TORCH_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16"}


class MappedWeights:
    """Every tensor of a safetensors checkpoint (sharded or not) by name, read without loading the files."""

    def __init__(self, directory: Path):
        self._maps: list[mmap.mmap] = []
        self._tensors: dict[str, tuple[int, str, tuple[int, ...], int]] = {}  # name → map, dtype, shape, offset
        self._files: dict[str, str] = {}
        for file_name in weight_files(directory, "*.safetensors", "model.safetensors.index.json"):
            with (directory / file_name).open("rb") as file:
                mapped = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_COPY)  # private: torch wants a writable buffer
            (length,) = struct.unpack("<Q", mapped[:8])
            header = json.loads(mapped[8 : 8 + length])
            for name, entry in header.items():
                if name == "__metadata__":
                    continue
                start = 8 + length + entry["data_offsets"][0]
                self._tensors[name] = (len(self._maps), entry["dtype"], tuple(entry["shape"]), start)
                self._files[name] = file_name
            self._maps.append(mapped)

    def __contains__(self, name: str) -> bool:
        return name in self._tensors

    def fp32_bytes(self) -> int:
        """What the weights take in memory in fp32."""
        return 4 * sum(math.prod(shape) for _, _, shape, _ in self._tensors.values())

    def view(self, name: str) -> Any:
        """The tensor in the checkpoint's dtype, backed by the mapped file: touching it reads from disk."""
        import torch

        index, dtype_name, shape, offset = self._tensors[name]
        if dtype_name not in _TORCH_DTYPES:  # refused when read: sizing a checkpoint must not fail on a stray buffer
            raise SourceError(
                f"tensor {name} in {self._files[name]} is {dtype_name}, not a floating-point type",
                "pass an unquantized checkpoint (fp32, fp16 or bf16 safetensors)",
            )
        dtype = getattr(torch, _TORCH_DTYPES[dtype_name])
        count = math.prod(shape)
        return torch.frombuffer(self._maps[index], dtype=dtype, count=count, offset=offset).view(shape)

    def read(self, name: str, rows: Any = slice(None)) -> Any:
        """An fp32 copy of `rows` of a tensor (a slice or an index tensor); the mapped pages are given back."""
        import torch

        view = self.view(name)
        values = view[rows].to(torch.float32, copy=True)
        drop_mapped_pages(view if isinstance(rows, torch.Tensor) else view[rows])
        return values


def drop_mapped_pages(tensor: Any) -> None:
    """Give back the resident pages under a tensor that is memory-mapped from a file.

    Mapped pages count in the process's RSS until unmapped; each weight is read once here, so its pages are dropped
    once quantized (MADV_DONTNEED: a clean file-backed page is read from the file again if touched again). A tensor
    in anonymous memory is left alone: dropping would zero it.
    """
    import ctypes
    import mmap

    if not file_backed(tensor):
        return
    start, end = _span(tensor)
    first, last = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE, end // mmap.PAGESIZE * mmap.PAGESIZE
    if last > first:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first), 4)  # MADV_DONTNEED


def _span(tensor: Any) -> tuple[int, int]:
    """First and one-past-last byte address of a strided CPU tensor (non-negative strides)."""
    last = sum((size - 1) * stride for size, stride in zip(tensor.shape, tensor.stride(), strict=True))
    return tensor.data_ptr(), tensor.data_ptr() + (last + 1) * tensor.element_size()


def file_backed(tensor: Any) -> bool:
    """True when the tensor lies inside one mapping of a file (transformers' safetensors maps, our spill files)."""
    if tensor.device.type != "cpu" or tensor.numel() == 0:
        return False
    start, end = _span(tensor)
    with open("/proc/self/maps", encoding="utf-8") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            low, high = (int(bound, 16) for bound in fields[0].split("-"))
            if low <= start and end <= high:
                return len(fields) == 6 and fields[5].startswith("/") and not fields[5].startswith("/dev/")
    return False


class SafetensorsWriter:
    """A safetensors file written a tensor at a time: the header is laid out first from every tensor's name and
    shape (fp32), then each tensor's bytes go to its place as it is computed, so no two tensors need be in memory.
    safetensors' own `save_file` takes them all at once (Phi-4-mini in fp32: 15 GB)."""

    def __init__(self, path: Path, shapes: dict[str, tuple[int, ...]]):
        entries: dict[str, dict[str, Any]] = {}
        offset = 0
        for name, shape in shapes.items():
            size = 4 * math.prod(shape)
            entries[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + size]}
            offset += size
        header = json.dumps(entries, separators=(",", ":")).encode()
        header += b" " * (-len(header) % 8)  # the format aligns the data to 8 bytes
        self._data_start = 8 + len(header)
        self._entries = entries
        self._file = path.open("wb")
        self._file.write(struct.pack("<Q", len(header)) + header)
        self._file.truncate(self._data_start + offset)

    def write(self, name: str, tensor: Any, row: int = 0) -> None:
        """`tensor` (or, with `row`, its rows from `row` on) into the place of `name`."""
        import torch

        entry = self._entries[name]
        values = tensor.detach().to(torch.float32).contiguous()
        row_bytes = 4 * math.prod(entry["shape"][1:]) if row else 0
        self._file.seek(self._data_start + entry["data_offsets"][0] + row * row_bytes)
        self._file.write(values.numpy().data)

    def __enter__(self) -> SafetensorsWriter:
        return self

    def __exit__(self, *_exc: object) -> None:
        self._file.close()
