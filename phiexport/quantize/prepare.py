"""The float checkpoint the genai builder exports: the source itself, or a copy rotated and/or calibrated-quantized
as the recipe asks (weights replaced by their dequantized values; the integer codes are returned beside it).

    >>> prepared, calibrated = prepare_checkpoint(checkpoint, scratch / "prepared", recipe)   # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from phiexport.quantize.calibrated import CalibratedWeights
from phiexport.recipe import Recipe
from phiexport.source import Checkpoint
from phiexport.source.hf_dir import read_json
from phiexport.source.torch_model import load_fp32_model


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
    checkpoint: Checkpoint,
    output: Path,
    recipe: Recipe,
    *,
    on_layer: Callable[[int, int], None] | None = None,
) -> tuple[Checkpoint, CalibratedWeights | None]:
    """`checkpoint` unchanged when neither rotation nor calibrated quantization is asked; else the modified copy."""
    from phiexport.quantize.calibrated import calibrate_weights
    from phiexport.quantize.rotation import rotate_decoder

    quant = recipe.quantization
    if not (quant.rotate or quant.calibrated):
        return checkpoint, None
    model = load_float_model(checkpoint, trust_remote_code=recipe.source.trust_remote_code)
    if quant.rotate:
        rotate_decoder(model, quant.rotation_seed)
    calibrated = None
    if quant.calibrated:
        calibrated = calibrate_weights(model, calibration_text(checkpoint, recipe), quant, on_layer=on_layer)
    return save_checkpoint(model, checkpoint, output), calibrated


def save_checkpoint(model: Any, checkpoint: Checkpoint, output: Path) -> Checkpoint:
    """`model` saved to `output` with the source's tokenizer and chat template; the manifest keeps describing the
    original source, so only `path` and `config` change."""
    model.save_pretrained(output)
    for item in checkpoint.path.iterdir():
        if item.is_file() and not (output / item.name).exists() and not item.name.endswith(".safetensors"):
            shutil.copy2(item, output / item.name)
    return dataclasses.replace(checkpoint, path=output, config=read_json(output / "config.json"))
