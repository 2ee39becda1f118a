import json

import pytest

from phiexport.errors import BuildError
from phiexport.export.genai_builder import export_with_builder, stage_checkpoint
from phiexport.recipe import SourceConfig
from phiexport.source import resolve_source


def export(tmp_path, options):
    export_with_builder(
        tmp_path / "model",
        tmp_path / "out",
        precision="int4",
        execution_provider="cpu",
        options=options,
        cache_dir=tmp_path / "cache",
        log_path=tmp_path / "build.log",
    )


def test_only_validated_option_names_reach_the_builder(tmp_path):
    with pytest.raises(ValueError, match="int4_block_size"):
        export(tmp_path, {"int4_block_size": "32"})


def test_a_builder_crash_becomes_one_line_naming_the_log(tmp_path, monkeypatch):
    import onnxruntime_genai.models.builder as builder

    def crash(*args, **kwargs):
        raise RuntimeError("first line of the builder's message\nsecond line")

    monkeypatch.setattr(builder, "parse_extra_options", crash)
    with pytest.raises(BuildError) as caught:
        export(tmp_path, {"block_size": "32"})
    assert caught.value.cause == (
        "the onnxruntime-genai builder failed: RuntimeError: first line of the builder's message"
    )
    assert str(tmp_path / "build.log") in caught.value.fix


def test_phi3_config_written_by_transformers5_is_staged_with_the_type_key(mini_phi4_transformers5, tmp_path):
    checkpoint = resolve_source(SourceConfig(model=str(mini_phi4_transformers5)), tmp_path / "cache")
    staged = stage_checkpoint(checkpoint, tmp_path / "scratch")
    assert staged != checkpoint.path
    assert json.loads((staged / "config.json").read_text())["rope_parameters"]["type"] == "longrope"
    assert (staged / "model.safetensors").resolve() == (checkpoint.path / "model.safetensors").resolve()
    assert "type" not in json.loads((checkpoint.path / "config.json").read_text())["rope_parameters"]


def test_published_configs_go_to_the_builder_untouched(mini_phi4, tmp_path):
    checkpoint = resolve_source(SourceConfig(model=str(mini_phi4)), tmp_path / "cache")
    assert stage_checkpoint(checkpoint, tmp_path / "scratch") == checkpoint.path
