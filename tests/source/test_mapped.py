import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from phiexport.errors import SourceError
from phiexport.source.mapped import MappedWeights, drop_mapped_pages


def _resident_file_kib() -> int:
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("RssFile:"))


def test_pages_of_a_mapped_tensor_are_given_back_and_anonymous_memory_is_left_alone(tmp_path):
    path = tmp_path / "weights.bin"
    np.arange(16 << 20, dtype=np.float32).tofile(path)  # 64 MiB
    mapped = torch.from_file(str(path), shared=False, size=16 << 20, dtype=torch.float32)
    before = _resident_file_kib()
    assert float(mapped.sum()) > 0  # touches every page
    touched = _resident_file_kib()
    drop_mapped_pages(mapped.view(4096, 4096).T)
    assert touched - before > 60_000  # KiB
    assert touched - _resident_file_kib() > 60_000  # given back (loading ctypes may map a few pages of its own)
    assert float(mapped[-1]) == (16 << 20) - 1  # read back from the file

    copy = torch.arange(1 << 20, dtype=torch.float32)
    drop_mapped_pages(copy)
    assert float(copy[-1]) == (1 << 20) - 1


def test_mapped_weights_read_every_dtype_and_shard_exactly(tmp_path):
    import json

    generator = torch.Generator().manual_seed(0)
    tensors = {
        "a": torch.randn(300, 64, generator=generator).to(torch.bfloat16),
        "b": torch.randn(7, generator=generator).to(torch.float16),
        "c": torch.randn(5, 3, generator=generator),
    }
    save_file({"a": tensors["a"]}, tmp_path / "model-00001-of-00002.safetensors")
    save_file({"b": tensors["b"], "c": tensors["c"]}, tmp_path / "model-00002-of-00002.safetensors")
    weight_map = {"a": "model-00001-of-00002.safetensors"} | dict.fromkeys("bc", "model-00002-of-00002.safetensors")
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))

    weights = MappedWeights(tmp_path)
    for name, tensor in tensors.items():
        assert weights.view(name).dtype == tensor.dtype
        assert torch.equal(weights.read(name), tensor.float())
    rows = torch.tensor([299, 0, 17, 17])
    assert torch.equal(weights.read("a", rows), tensors["a"].float()[rows])
    assert torch.equal(weights.read("a", slice(100, 164)), tensors["a"].float()[100:164])
    assert "d" not in weights


def test_mapped_weights_refuse_integer_tensors(tmp_path):
    save_file({"q": torch.zeros(4, dtype=torch.int8), "f": torch.ones(2)}, tmp_path / "model.safetensors")
    weights = MappedWeights(tmp_path)
    assert weights.fp32_bytes() == 24  # sized without reading
    with pytest.raises(SourceError, match=r"tensor q in model\.safetensors is I8"):
        weights.view("q")
