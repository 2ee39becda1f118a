"""Calibrated weight quantization of a loaded torch model: which grid each decoder linear gets (int4, or int8 for
the linears `mixed: auto` measured as most sensitive), then GPTQ, AWQ or plain rounding one layer at a time.

The model is left computing what the package will (weights replaced by their dequantized values); the codes are
returned for the target to write into its graphs (onnx_weights.py), so every target gets the same integers. The LM
head is left to each target's own quantizer: on the CPU it is also the (tied) embedding, which the builder stores
once for both uses, and the NPU package keeps it on the CPU at 8 bits.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

import torch

from phiexport.errors import BuildError
from phiexport.quantize.grid import BlockGrid, QuantizedWeight, quantize_rtn
from phiexport.quantize.layerwise import (
    LayerCall,
    LayerwiseQuantizer,
    Method,
    first_layer_calls,
    moved_to,
    quantize_layerwise,
)
from phiexport.recipe import QuantizationConfig

# Linears that read the same input share one bit width (the genai builder packs q/k/v into one MatMulNBits).
_UNITS = (
    ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.qkv_proj"),
    ("self_attn.o_proj",),
    ("mlp.gate_proj", "mlp.up_proj", "mlp.gate_up_proj"),
    ("mlp.down_proj",),
)
SENSITIVITY_SEQUENCES = 8  # calibration conversations scored per candidate linear by `mixed: auto`
TRIAL_BYTES = 1 << 30  # hidden states of the trials that `mixed: auto` runs through the layers together


@dataclass
class CalibratedWeights:
    weights: dict[str, QuantizedWeight]  # HF module name → codes
    summary: dict[str, Any]  # for the manifest


def quantization_units(model: Any) -> list[tuple[str, ...]]:
    """Groups of HF decoder linear names quantized at one bit width, in model order."""
    units = []
    for index in range(len(model.model.layers)):
        for names in _UNITS:
            present = tuple(
                f"model.layers.{index}.{name}" for name in names if _has(model, f"model.layers.{index}.{name}")
            )
            if present:
                units.append(present)
    return units


def calibrate_weights(
    model: Any,
    sequences: list[list[int]],
    quant: QuantizationConfig,
    *,
    device: torch.device | None = None,
    on_layer: Callable[[int, int], None] | None = None,
) -> CalibratedWeights:
    """Quantize every decoder linear of `model` (in place) as `quant` says, GPTQ/AWQ a layer at a time on `device`
    (default: the CPU)."""
    symmetric = not quant.zero_points
    units = quantization_units(model)
    bits = {unit: 4 if quant.precision == "int4" else 8 for unit in units}
    summary = _summary(quant, device)
    if quant.mixed == "auto":
        grid = BlockGrid(4, quant.block_size, symmetric)
        sensitivity = measure_sensitivity(model, units, grid, sequences, device=device)
        sizes = {unit: sum(model.get_submodule(name).weight.numel() for name in unit) for unit in units}
        promoted = choose_int8(sensitivity, sizes, quant.mixed_bits, units)
        bits.update({unit: 8 for unit in promoted})
        summary["mixed"] = {
            "budget_bits": quant.mixed_bits,
            "mean_bits": mean_bits(bits, sizes),
            "int8": [", ".join(unit) for unit in units if unit in promoted],
            "sensitivity_kl": {", ".join(unit): round(value, 6) for unit, value in sensitivity.items()},
        }
    grids = {name: BlockGrid(bits[unit], quant.block_size, symmetric) for unit in units for name in unit}
    if quant.method in ("gptq", "awq"):
        weights = quantize_layerwise(model, sequences, grids, quant.method, device=device, on_layer=on_layer)
    else:
        weights = _round_in_place(model, grids)
    return CalibratedWeights(weights, summary)


def layer_by_layer(
    model: Any, sequences: list[list[int]], quant: QuantizationConfig, *, device: torch.device | None = None
) -> tuple[LayerwiseQuantizer, dict[str, Any]]:
    """GPTQ or AWQ for a model whose layers arrive one at a time (a `LayeredModel`'s skeleton): the quantizer and
    the manifest's summary. (A measured int4/int8 mix scores the whole model per candidate: targets/npu.py refuses
    it before the build starts.)"""
    if quant.method not in ("gptq", "awq"):
        raise BuildError(f"{quant.method} does not run a layer at a time", "report a bug")
    bits = 4 if quant.precision == "int4" else 8
    grid = BlockGrid(bits, quant.block_size, not quant.zero_points)
    grids = {name: grid for unit in quantization_units(model) for name in unit}
    quantizer = LayerwiseQuantizer(model, sequences, grids, cast(Method, quant.method), device=device)
    return quantizer, _summary(quant, device)


def _summary(quant: QuantizationConfig, device: torch.device | None) -> dict[str, Any]:
    from phiexport.quantize.device import describe_device

    summary: dict[str, Any] = {
        "method": quant.method,
        "block_size": quant.block_size,
        "symmetric": not quant.zero_points,
    }
    if quant.method in ("gptq", "awq"):
        summary["device"] = describe_device(device or torch.device("cpu"))
    return summary


def measure_sensitivity(
    model: Any,
    units: list[tuple[str, ...]],
    grid: BlockGrid,
    sequences: list[list[int]],
    *,
    device: torch.device | None = None,
    trial_bytes: int = TRIAL_BYTES,
) -> dict[tuple[str, ...], float]:
    """Mean KL(float ‖ model with only `unit` rounded to `grid`) over a few calibration conversations, per unit.

    A unit's trial runs only its own layer and those after it, from the float inputs of its layer. The trials of a
    wave advance together a decoder layer at a time, so each layer goes to `device` (default: the CPU) once per wave;
    a wave carries as many trials' hidden states as `trial_bytes` holds.
    """
    device = device or torch.device("cpu")
    layers = model.model.layers
    result: dict[tuple[str, ...], float] = {}
    with torch.inference_mode():  # the embedding runs where the model is: a tied lm_head moves it along
        floats = [call.to(device) for call in first_layer_calls(model, sequences[:SENSITIVITY_SEQUENCES])]
    with torch.inference_mode(), moved_to(device, model.model.norm, model.lm_head):
        reference = [
            (ref.exp(), (ref.exp() * ref).sum(dim=-1))
            for ref in _log_probs(model, _trials(model, floats, 0, [()], grid, device)[()])
        ]
        wave = max(1, trial_bytes // sum(call.hidden.numel() * call.hidden.element_size() for call in floats))
        position = 0
        for first in range(0, len(units), wave):
            chunk = units[first : first + wave]
            for index in range(position, _layer_index(chunk[0])):
                with moved_to(device, layers[index]):
                    floats = [call.through(layers[index]) for call in floats]
            position = _layer_index(chunk[0])
            for unit, calls in _trials(model, floats, position, chunk, grid, device).items():
                # KL(float ‖ rounded) in torch: numpy's float64 softmax over a 49k vocabulary cost 10× the forward
                divergences = [
                    p_log_p - (p * found).sum(dim=-1)
                    for (p, p_log_p), found in zip(reference, _log_probs(model, calls), strict=True)
                ]
                result[unit] = float(torch.cat(divergences).mean())
    return result


def _trials(
    model: Any,
    floats: list[LayerCall],
    start: int,
    units: list[tuple[str, ...]],
    grid: BlockGrid,
    device: torch.device,
) -> dict[tuple[str, ...], list[LayerCall]]:
    """What the last decoder layer gives for each unit's trial (its own layer run with only it rounded, the layers
    after it float), `floats` being the float inputs of layer `start`; the empty unit () is the float model."""
    layers = model.model.layers
    starting: dict[int, list[tuple[str, ...]]] = {}
    for unit in units:
        starting.setdefault(_layer_index(unit) if unit else start, []).append(unit)
    running: dict[tuple[str, ...], list[LayerCall]] = {}
    for index in range(start, len(layers)):
        layer = layers[index]
        with moved_to(device, layer):
            running = {unit: [call.through(layer) for call in calls] for unit, calls in running.items()}
            for unit in starting.get(index, []):
                with _rounded(model, unit, grid):
                    running[unit] = [call.through(layer) for call in floats]
            if index < max(starting):
                floats = [call.through(layer) for call in floats]
    return running


def _log_probs(model: Any, calls: list[LayerCall]) -> list[torch.Tensor]:
    return [torch.log_softmax(model.lm_head(model.model.norm(call.hidden))[0].float(), dim=-1) for call in calls]


def _layer_index(unit: tuple[str, ...]) -> int:
    return int(unit[0].split(".")[2])  # model.layers.<index>.…


@contextmanager
def _rounded(model: Any, unit: tuple[str, ...], grid: BlockGrid) -> Iterator[None]:
    """The unit's linears rounded to `grid` for the with-block, float again after it."""
    linears = [model.get_submodule(name) for name in unit]
    originals = [linear.weight.detach().clone() for linear in linears]
    for linear in linears:
        linear.weight.copy_(quantize_rtn(linear.weight, grid).dequantize().to(linear.weight.dtype))
    try:
        yield
    finally:
        for linear, original in zip(linears, originals, strict=True):
            linear.weight.copy_(original)


def choose_int8(
    sensitivity: dict[tuple[str, ...], float],
    sizes: dict[tuple[str, ...], int],
    budget_bits: float,
    promotable: list[tuple[str, ...]],
) -> set[tuple[str, ...]]:
    """The most sensitive units, taken in order of sensitivity, moved to int8 while the mean stays within budget.

    >>> sorted(choose_int8({("a",): 0.9, ("b",): 0.5, ("c",): 0.1}, {("a",): 10, ("b",): 10, ("c",): 20}, 5.0,
    ...                    [("a",), ("b",), ("c",)]))    # a: 4 + 4·10/40 = 5.0 bits; b would make 6.0
    [('a',)]
    """
    total = sum(sizes.values())
    spare = (budget_bits - 4.0) * total  # bits beyond all-int4 that the budget allows
    chosen: set[tuple[str, ...]] = set()
    for unit in sorted(promotable, key=lambda item: sensitivity[item], reverse=True):
        extra = 4 * sizes[unit]
        if extra <= spare + 1e-9:
            chosen.add(unit)
            spare -= extra
    return chosen


def mean_bits(bits: dict[tuple[str, ...], int], sizes: dict[tuple[str, ...], int]) -> float:
    """Weight-count-weighted mean of the code bits (scales and zero points not counted)."""
    return round(sum(bits[unit] * sizes[unit] for unit in sizes) / sum(sizes.values()), 4)


def _round_in_place(model: Any, grids: dict[str, BlockGrid]) -> dict[str, QuantizedWeight]:
    weights = {}
    with torch.inference_mode():
        for name, grid in grids.items():
            linear = model.get_submodule(name)
            weights[name] = quantize_rtn(linear.weight, grid)
            linear.weight.copy_(weights[name].dequantize().to(linear.weight.dtype))
    return weights


def _has(model: Any, name: str) -> bool:
    try:
        model.get_submodule(name)
    except AttributeError:
        return False
    return True
