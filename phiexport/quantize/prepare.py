"""The float checkpoint the genai builder exports: the source itself, or a copy rotated and/or calibrated-quantized
as the recipe asks (weights replaced by their dequantized values; the integer codes are returned beside it).
`prepare_checkpoint(checkpoint, output, recipe)` returns that checkpoint and the codes (None without calibration).
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

from phiexport.quantize.calibrated import CalibratedWeights
from phiexport.quantize.device import calibration_device
from phiexport.recipe import Recipe
from phiexport.source import Checkpoint
from phiexport.source.hf_dir import read_json
from phiexport.source.torch_model import load_fp32_model

VOCAB_ROWS = 16384  # embedding and lm_head rows rotated and written at once: 200 MB at Phi-4-mini's width


def load_float_model(checkpoint: Checkpoint, *, trust_remote_code: bool) -> Any:
    return load_fp32_model(checkpoint.path, trust_remote_code=trust_remote_code)


def calibration_text(checkpoint: Checkpoint, recipe: Recipe, max_tokens: int | None = None) -> list[list[int]]:
    """The recipe's calibration conversations as token ids (same seed, same ids)."""
    from transformers import AutoTokenizer

    from phiexport.evaluate.data import calibration_sequences

    calibration = recipe.calibration
    tokenizer = AutoTokenizer.from_pretrained(checkpoint.path, trust_remote_code=recipe.source.trust_remote_code)
    limit = calibration.max_tokens if max_tokens is None else min(calibration.max_tokens, max_tokens)
    return calibration_sequences(tokenizer, calibration.sequences, limit, calibration.seed)


def prepare_checkpoint(
    checkpoint: Checkpoint, output: Path, recipe: Recipe
) -> tuple[Checkpoint, CalibratedWeights | None]:
    """`checkpoint` unchanged when neither rotation nor calibrated quantization is asked; else the modified copy.

    The copy is made a decoder layer at a time (`write_prepared_layers`), except for a measured int4/int8 mix, which
    scores candidates on the whole model.
    """
    from phiexport.quantize.calibrated import calibrate_weights
    from phiexport.quantize.rotation import rotate_decoder

    quant = recipe.quantization
    if not (quant.rotate or quant.calibrated):
        return checkpoint, None
    if quant.mixed != "auto":
        return write_prepared_layers(checkpoint, output, recipe)
    model = load_float_model(checkpoint, trust_remote_code=recipe.source.trust_remote_code)
    if quant.rotate:
        rotate_decoder(model, quant.rotation_seed)
    device = calibration_device(recipe.calibration.device)
    calibrated = calibrate_weights(model, calibration_text(checkpoint, recipe), quant, device=device)
    return save_checkpoint(model, checkpoint, output), calibrated


def write_prepared_layers(
    checkpoint: Checkpoint, output: Path, recipe: Recipe
) -> tuple[Checkpoint, CalibratedWeights | None]:
    """The rotated and/or GPTQ/AWQ-quantized checkpoint as fp32 safetensors, one decoder layer in memory at a time
    (the fp32 model was 15 GB for Phi-4-mini) and the vocabulary matrices in row blocks."""
    from phiexport.quantize.calibrated import layer_by_layer
    from phiexport.source.layered import EMBEDDING, LayeredModel
    from phiexport.source.mapped import SafetensorsWriter

    quant = recipe.quantization
    source = LayeredModel(
        checkpoint.path,
        rotation_seed=quant.rotation_seed if quant.rotate else None,
        trust_remote_code=recipe.source.trust_remote_code,
    )
    quantizer, summary = None, None
    if quant.calibrated:
        device = calibration_device(recipe.calibration.device)
        quantizer, summary = layer_by_layer(source.model, calibration_text(checkpoint, recipe), quant, device=device)
    skeleton = source.model
    tied = bool(getattr(skeleton.config, "tie_word_embeddings", False)) and not quant.rotate
    shapes = {name: tuple(tensor.shape) for name, tensor in skeleton.state_dict().items()}
    shapes[EMBEDDING] = (source.vocab_size, skeleton.config.hidden_size)
    if tied:
        shapes.pop("lm_head.weight", None)
    else:
        shapes["lm_head.weight"] = shapes[EMBEDDING]
    output.mkdir(parents=True, exist_ok=True)
    weights: dict[str, Any] = {}
    with SafetensorsWriter(output / "model.safetensors", shapes) as writer:
        for start in range(0, source.vocab_size, VOCAB_ROWS):
            stop = min(start + VOCAB_ROWS, source.vocab_size)
            writer.write(EMBEDDING, source.embedding_rows(slice(start, stop)), row=start)
            if not tied:
                writer.write("lm_head.weight", source.lm_head_rows(start, stop), row=start)
        writer.write("model.norm.weight", source.norm.weight)
        for index in range(source.num_layers):
            layer = source.layer(index)
            if quantizer is not None:
                weights.update(quantizer.quantize(index, layer))
            for name, tensor in layer.state_dict().items():
                writer.write(f"model.layers.{index}.{name}", tensor)
            source.release(layer)
    skeleton.config.tie_word_embeddings = tied
    skeleton.config.save_pretrained(output)
    for item in checkpoint.path.iterdir():
        if item.is_file() and not (output / item.name).exists() and not item.name.endswith(".safetensors"):
            shutil.copy2(item, output / item.name)
    calibrated = CalibratedWeights(weights, summary) if summary is not None else None
    return dataclasses.replace(checkpoint, path=output, config=read_json(output / "config.json")), calibrated


def save_checkpoint(model: Any, checkpoint: Checkpoint, output: Path) -> Checkpoint:
    """`model` saved to `output` with the source's tokenizer and chat template; the manifest keeps describing the
    original source, so only `path` and `config` change."""
    model.save_pretrained(output)
    for item in checkpoint.path.iterdir():
        if item.is_file() and not (output / item.name).exists() and not item.name.endswith(".safetensors"):
            shutil.copy2(item, output / item.name)
    return dataclasses.replace(checkpoint, path=output, config=read_json(output / "config.json"))
