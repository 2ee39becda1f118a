"""GGUF files: architecture read from the header, weights dequantized once into a cached HF directory.

The genai builder takes only fp16/fp32 GGUF files, so quantized ones go through transformers' GGUF loader.
The dequantized directory is cached by the file's sha256, so later builds of the same file skip the ~20 s load.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from phiexport.architectures import Architecture, architecture_for_gguf
from phiexport.errors import SourceError
from phiexport.source.cache import cached_copy

if TYPE_CHECKING:
    from phiexport.quantize.gguf_blocks import BlockWeight


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
    return cached_copy(cache_root / "gguf", sha256, partial(_dequantize, path))


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


def gguf_linears(path: Path) -> tuple[dict[str, BlockWeight], dict[str, str]]:
    """The GGUF's 2-D tensors in a block format that maps exactly (quantize/gguf_blocks.py), by Hugging Face module
    name, rows in the order transformers gives them (llama.cpp stores Llama's q/k rows permuted for its rotary
    layout; transformers undoes that, and so is done here to the codes, scales and mins). A tied LM head appears as
    `lm_head` too.

    Also returns the GGUF type of every 2-D tensor by module name: these, and those without an exact mapping.
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

    from phiexport.quantize.gguf_blocks import LOSSLESS, gguf_to_blocks

    reader = GGUFReader(path)
    architecture = reader.fields["general.architecture"].contents()
    parsed = dict(load_gguf_checkpoint(path)["config"])  # the header, parsed once
    processor = TENSOR_PROCESSORS.get(architecture, TensorProcessor)(config=dict(parsed))
    config = AutoConfig.for_model(**parsed)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    names = get_gguf_hf_weights_map(skeleton, processor)
    weights: dict[str, BlockWeight] = {}
    formats: dict[str, str] = {}
    for tensor in reader.tensors:
        hf_name = names.get(tensor.name)
        if len(tensor.shape) != 2 or hf_name is None:
            continue
        module = hf_name.removesuffix(".weight")
        qtype = GGMLQuantizationType(tensor.tensor_type)
        formats[module] = qtype.name
        if qtype not in LOSSLESS:
            continue
        cols, rows = (int(size) for size in tensor.shape)  # GGUF lists the fastest-varying dimension first
        order = np.asarray(processor.process(np.arange(rows), tensor.name).weights)
        if not np.array_equal(np.sort(order), np.arange(rows)):
            continue  # transformers changes these values, not only their order: no exact mapping
        weights[module] = gguf_to_blocks(np.asarray(tensor.data), qtype, rows, cols).take_rows(order)
    embedding = "model.embed_tokens"
    if getattr(config, "tie_word_embeddings", False) and "lm_head" not in formats and embedding in formats:
        formats["lm_head"] = formats[embedding]
        if embedding in weights:
            weights["lm_head"] = weights[embedding]
    return weights, formats
