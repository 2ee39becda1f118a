import json
import shutil
from pathlib import Path

import pytest

from phiexport.errors import SourceError
from phiexport.source.hf_dir import check_hf_dir


@pytest.fixture
def llama_copy(miniature_dirs: dict[str, Path], tmp_path: Path) -> Path:
    return Path(shutil.copytree(miniature_dirs["llama"], tmp_path / "model"))


def check(directory: Path, **options):
    return check_hf_dir(
        directory,
        allow_pickle=options.get("allow_pickle", False),
        trust_remote_code=options.get("trust_remote_code", False),
    )


def test_a_complete_directory_passes_and_lists_what_the_build_reads(llama_copy):
    _config, architecture, used = check(llama_copy)
    assert architecture.model_type == "llama"
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(used)


def test_missing_config(llama_copy):
    (llama_copy / "config.json").unlink()
    with pytest.raises(SourceError, match=r"no config\.json"):
        check(llama_copy)


def test_invalid_config_json(llama_copy):
    (llama_copy / "config.json").write_text("{ not json")
    with pytest.raises(SourceError, match="is not valid JSON"):
        check(llama_copy)


def test_unsupported_architecture_lists_the_supported_ones(llama_copy):
    config = json.loads((llama_copy / "config.json").read_text())
    config.update(model_type="gpt2", architectures=["GPT2LMHeadModel"])
    (llama_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(SourceError) as caught:
        check(llama_copy)
    assert "unsupported architecture: model_type 'gpt2'" in caught.value.cause
    assert "phi3 (Phi3ForCausalLM)" in caught.value.fix and "llama (LlamaForCausalLM)" in caught.value.fix


def test_pickle_weights_are_refused_unless_allowed(llama_copy):
    import torch
    from safetensors.torch import load_file

    torch.save(load_file(llama_copy / "model.safetensors"), llama_copy / "pytorch_model.bin")
    (llama_copy / "model.safetensors").unlink()
    with pytest.raises(SourceError, match="pickle files") as caught:
        check(llama_copy)
    assert "--allow-pickle" in caught.value.fix
    _, _, used = check(llama_copy, allow_pickle=True)
    assert "pytorch_model.bin" in used


def test_no_weights_at_all(llama_copy):
    (llama_copy / "model.safetensors").unlink()
    with pytest.raises(SourceError, match=r"no weights .*no \*\.safetensors"):
        check(llama_copy)


def test_missing_tokenizer(llama_copy):
    (llama_copy / "tokenizer.json").unlink()
    with pytest.raises(SourceError, match="no tokenizer"):
        check(llama_copy)


def test_tokenizer_needing_remote_code_is_refused_unless_trusted(llama_copy):
    path = llama_copy / "tokenizer_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "auto_map": {"AutoTokenizer": ["x.Tok", None]}}))
    with pytest.raises(SourceError, match="own Python code") as caught:
        check(llama_copy)
    assert "--trust-remote-code" in caught.value.fix
    check(llama_copy, trust_remote_code=True)
