"""GGUF files: architecture read from the header, weights dequantized once into a cached HF directory.

The genai builder takes only fp16/fp32 GGUF files, so quantized ones go through transformers' GGUF loader.
The dequantized directory is cached by the file's sha256, so later builds of the same file skip the ~20 s load.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from phiexport.architectures import Architecture, architecture_for_gguf
from phiexport.errors import SourceError

if TYPE_CHECKING:
    from phiexport.quantize.gguf_blocks import NBitsWeight

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


def quantized_linears(path: Path) -> tuple[dict[str, NBitsWeight], dict[str, str]]:
    """The GGUF's quantized 2-D tensors that map onto MatMulNBits exactly, by Hugging Face parameter name, rows in
    the order transformers gives them (llama.cpp stores Llama's q/k rows permuted for its rotary layout; transformers
    undoes that, and so is done here to the codes, scales and zero points).

    Also returns the format of every quantized 2-D tensor by HF name, these and the ones without an exact mapping.
    """
    import numpy as np
    import torch
    from gguf import GGMLQuantizationType, GGUFReader
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.modeling_gguf_pytorch_utils import (
        TENSOR_PROCESSORS,
        TensorProcessor,
        get_gguf_hf_weights_map,
        load_gguf_checkpoint,
    )

    from phiexport.quantize.gguf_blocks import LOSSLESS, gguf_to_nbits

    reader = GGUFReader(path)
    architecture = reader.fields["general.architecture"].contents()
    processor = TENSOR_PROCESSORS.get(architecture, TensorProcessor)(config=load_gguf_checkpoint(path)["config"])
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path.parent, gguf_file=path.name))
    names = get_gguf_hf_weights_map(skeleton, processor)
    weights: dict[str, NBitsWeight] = {}
    formats: dict[str, str] = {}
    for tensor in reader.tensors:
        qtype = GGMLQuantizationType(tensor.tensor_type)
        if len(tensor.shape) != 2 or qtype in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
            continue
        hf_name = names.get(tensor.name)
        if hf_name is None:
            continue
        formats[hf_name] = qtype.name
        if qtype not in LOSSLESS:
            continue
        cols, rows = (int(size) for size in tensor.shape)  # GGUF lists the fastest-varying dimension first
        order = np.asarray(processor.process(np.arange(rows), tensor.name).weights)
        if not np.array_equal(np.sort(order), np.arange(rows)):
            continue  # transformers changes these values, not only their order: no exact mapping
        weight = gguf_to_nbits(np.asarray(tensor.data), qtype, rows, cols)
        weights[hf_name] = weight.rows(order)
    return weights, formats
