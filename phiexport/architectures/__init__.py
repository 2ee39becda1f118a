"""Supported model families, one small module each: what differs between them, and nothing else.

`architecture_for(config)` is called before any heavy work, so an unsupported model fails at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from phiexport.errors import SourceError

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


ARCHITECTURES: dict[str, Architecture] = {}


def register_architecture(arch: Architecture) -> Architecture:
    if arch.model_type in ARCHITECTURES:
        raise ValueError(f"architecture {arch.model_type} registered twice")
    ARCHITECTURES[arch.model_type] = arch
    return arch


def supported() -> str:
    return ", ".join(f"{a.model_type} ({a.hf_class})" for a in ARCHITECTURES.values())


def architecture_for(config: Config) -> Architecture:
    """The Architecture for a parsed config.json, or a SourceError listing the supported ones."""
    model_type = config.get("model_type")
    arch = ARCHITECTURES.get(str(model_type))
    hf_class = (config.get("architectures") or [None])[0]
    if arch is None or hf_class != arch.hf_class:
        raise SourceError(
            f"unsupported architecture: model_type {model_type!r}, class {hf_class!r}",
            f"phiexport supports {supported()}",
        )
    _check_lm_head_is_unambiguous(arch, config)
    return arch


def architecture_for_gguf(gguf_name: str) -> Architecture:
    for arch in ARCHITECTURES.values():
        if arch.gguf_name == gguf_name:
            return arch
    raise SourceError(
        f"unsupported GGUF architecture {gguf_name!r}",
        f"phiexport supports {', '.join(a.gguf_name for a in ARCHITECTURES.values())} GGUF files",
    )


def _check_lm_head_is_unambiguous(arch: Architecture, config: Config) -> None:
    # The genai builder takes *every* nn.Linear whose out_features equals vocab_size for the LM head, so such a
    # model exports without error and computes garbage (seen on a miniature whose fused qkv width was its vocab).
    vocab = config.get("vocab_size")
    if vocab in arch.linear_out_features(config):
        raise SourceError(
            f"a decoder linear layer is {vocab} wide, the same as vocab_size; the genai builder would take it "
            "for the LM head and export a wrong model",
            "use a vocabulary size that differs from every projection width",
        )


def linear_in_features(config: Config) -> set[int]:
    """Input widths (K) of the linear layers: hidden (q/k/v, gate/up, lm_head), attention output, MLP down."""
    return {config["hidden_size"], config["num_attention_heads"] * head_dim(config), config["intermediate_size"]}


def head_dim(config: Config) -> int:
    return int(config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"])


def kv_heads(config: Config) -> int:
    return int(config.get("num_key_value_heads") or config["num_attention_heads"])


from phiexport.architectures import llama, phi3, qwen2, qwen3  # noqa: E402,F401  (register themselves)
