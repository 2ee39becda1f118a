"""Supported model families, one small module each: what differs between them, and nothing else.

`architecture_for(config)` is called before any heavy work, so an unsupported model fails at once.
"""

from __future__ import annotations

from phiexport.architectures.base import Architecture, Config, head_dim, kv_heads, linear_in_features
from phiexport.architectures.llama import LLAMA
from phiexport.architectures.phi3 import PHI3
from phiexport.architectures.qwen2 import QWEN2
from phiexport.architectures.qwen3 import QWEN3
from phiexport.errors import SourceError

__all__ = ["ARCHITECTURES", "Architecture", "Config", "head_dim", "kv_heads", "linear_in_features"]

ARCHITECTURES: dict[str, Architecture] = {arch.model_type: arch for arch in (LLAMA, PHI3, QWEN2, QWEN3)}


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
