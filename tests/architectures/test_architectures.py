import pytest

from phiexport.architectures import ARCHITECTURES, architecture_for
from phiexport.architectures.phi3 import prepare_config
from phiexport.errors import SourceError
from tests.miniatures import MINIATURES


def test_every_registered_architecture_has_a_miniature():
    assert set(MINIATURES) == set(ARCHITECTURES), "add a miniature in tests/miniatures.py for each architecture"


def test_class_must_match_model_type():
    with pytest.raises(SourceError, match="unsupported architecture"):
        architecture_for({"model_type": "llama", "architectures": ["LlamaForSequenceClassification"]})


def test_a_projection_as_wide_as_the_vocabulary_is_refused():
    config = {
        "model_type": "phi3",
        "architectures": ["Phi3ForCausalLM"],
        "hidden_size": 512,
        "head_dim": 128,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 1024,
        "vocab_size": 1024,
    }
    with pytest.raises(SourceError, match="same as vocab_size"):  # fused qkv: (4 + 2·2) · 128 = 1024
        architecture_for(config)


def test_phi3_rope_type_only_gets_the_type_key_the_builder_reads():
    config = {"rope_parameters": {"rope_type": "longrope", "short_factor": [1.0]}}
    assert prepare_config(config)["rope_parameters"]["type"] == "longrope"
    assert "type" not in config["rope_parameters"]  # the caller's dict is not modified


def test_phi3_published_config_is_left_unchanged():
    config = {"rope_scaling": {"type": "longrope", "short_factor": [1.0], "long_factor": [2.0]}}
    assert prepare_config(config) == config
