"""What a model family is, as data, and the config arithmetic every family shares."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Config = dict[str, Any]


def _unchanged(config: Config) -> Config:
    return config


@dataclass(frozen=True)
class Architecture:
    model_type: str  # config.json `model_type`
    hf_class: str  # config.json `architectures[0]`, the class the genai builder dispatches on
    gguf_name: str  # GGUF `general.architecture`
    linear_out_features: Callable[[Config], set[int]]  # output widths of every nn.Linear inside a decoder layer
    prepare_config: Callable[[Config], Config] = field(default=_unchanged)  # fix-ups the builder needs


def linear_in_features(config: Config) -> set[int]:
    """Input widths (K) of the linear layers: hidden (q/k/v, gate/up, lm_head), attention output, MLP down."""
    return {config["hidden_size"], config["num_attention_heads"] * head_dim(config), config["intermediate_size"]}


def head_dim(config: Config) -> int:
    return int(config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"])


def kv_heads(config: Config) -> int:
    return int(config.get("num_key_value_heads") or config["num_attention_heads"])
