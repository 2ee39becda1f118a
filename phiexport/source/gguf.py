"""GGUF files: architecture read from the header, weights dequantized once into a cached HF directory.

The genai builder takes only fp16/fp32 GGUF files, so quantized ones go through transformers' GGUF loader.
The dequantized directory is cached by the file's sha256, so later builds of the same file skip the ~20 s load.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from phiexport.architectures import Architecture, architecture_for_gguf
from phiexport.errors import SourceError

_COMPLETE = ".complete"


def gguf_architecture(path: Path) -> Architecture:
    import gguf

    try:
        reader = gguf.GGUFReader(path)
        name = reader.fields["general.architecture"].contents()
    except (ValueError, KeyError, IndexError, OSError) as exc:
        raise SourceError(f"{path} is not a readable GGUF file ({exc})", "download the file again") from None
    return architecture_for_gguf(str(name))


def dequantized_checkpoint(path: Path, sha256: str, cache_root: Path) -> Path:
    """An fp32 Hugging Face directory holding `path`'s weights, tokenizer and chat template.

    Call gguf_architecture first: this loads every tensor.
    """
    target = cache_root / "gguf" / sha256[:32]
    if (target / _COMPLETE).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".partial-", dir=target.parent))
    try:
        _dequantize(path, staging)
        (staging / _COMPLETE).touch()
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _dequantize(path: Path, output: Path) -> None:
    from transformers import AutoTokenizer

    from phiexport.source.torch_model import load_fp32_model

    try:
        model = load_fp32_model(path.parent, gguf_file=path.name)
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    except (ValueError, KeyError, OSError, RuntimeError) as exc:
        raise SourceError(
            f"transformers could not load {path.name}: {exc}", "check the file is a complete GGUF model"
        ) from None
    # transformers marks GGUF-loaded models as quantized and refuses to save them; the weights are plain fp32 now.
    setattr(model, "hf_quantizer", None)  # noqa: B010  (typed as a Module attribute)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(output)
    tokenizer.save_pretrained(output)
