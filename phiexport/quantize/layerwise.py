"""Calibrated weight quantization one decoder layer at a time, on the torch model.

Only one layer's inputs are held (one `[1, T, hidden]` tensor per calibration conversation), never the whole model's
activations: layer i is calibrated on the outputs of layers 0 … i−1 *already quantized*, so later layers correct
for earlier rounding (GPTQ's sequential mode). Within a layer, the linears that read the same tensor form a group
(q/k/v, gate/up) and groups are quantized in call order, each seeing the quantized groups before it.

Every quantized linear's weight is replaced by its dequantized value in place, so the model afterwards computes what
the package will; the integer codes are returned for packaging.

On a GPU (`device`, quantize/device.py) each layer is moved there for its turn and back after it, with the calibration
inputs staying there between layers: the first layer's inputs are the only whole-model pass, and it runs where the
model is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any, Literal

import torch

from phiexport.quantize.awq import search_input_scales
from phiexport.quantize.gptq import gptq_quantize
from phiexport.quantize.grid import BlockGrid, QuantizedWeight, quantize_rtn

Method = Literal["gptq", "awq"]


@dataclass
class LayerCall:
    """What one decoder layer receives for one calibration conversation."""

    hidden: torch.Tensor
    kwargs: dict[str, Any]

    def through(self, layer: Any) -> LayerCall:
        """The call the next layer receives."""
        output = layer(self.hidden, **self.kwargs)
        return LayerCall(output[0] if isinstance(output, tuple) else output, self.kwargs)

    def to(self, device: torch.device) -> LayerCall:
        return LayerCall(self.hidden.to(device), _on_device(self.kwargs, device))


def _on_device(value: Any, device: torch.device) -> Any:
    """`value` with every tensor in it (through tuples, lists and dicts) on `device`."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, (tuple, list)):
        return type(value)(_on_device(item, device) for item in value)
    if isinstance(value, dict):
        return {key: _on_device(item, device) for key, item in value.items()}
    return value


@contextmanager
def moved_to(device: torch.device, *modules: Any) -> Iterator[None]:
    """`modules` on `device` for the with-block, back where they were after it (moved outside inference mode, so
    their weights stay ordinary tensors that later in-place updates may write)."""
    homes = [next(module.parameters()).device for module in modules]
    with torch.inference_mode(False):
        for module in modules:
            module.to(device)
    try:
        yield
    finally:
        with torch.inference_mode(False):
            for module, home in zip(modules, homes, strict=True):
                module.to(home)


class _Captured(Exception):
    pass


def quantize_layerwise(
    model: Any,
    sequences: list[list[int]],
    grids: dict[str, BlockGrid],
    method: Method,
    *,
    device: torch.device | None = None,
    on_layer: Callable[[int, int], None] | None = None,
) -> dict[str, QuantizedWeight]:
    """Quantize every linear named in `grids` (full module names, e.g. `model.layers.0.mlp.down_proj`), each layer
    on `device` (default: the CPU).

    `on_layer(done, total)` reports progress.
    """
    layers = model.model.layers
    quantizer = LayerwiseQuantizer(model, sequences, grids, method, device=device)
    quantized: dict[str, QuantizedWeight] = {}
    for index, layer in enumerate(layers):
        quantized.update(quantizer.quantize(index, layer))
        if on_layer:
            on_layer(index + 1, len(layers))
    return quantized


class LayerwiseQuantizer:
    """GPTQ or AWQ a decoder layer at a time, in order, each layer given to `quantize` as it is reached: the whole
    model need not be in memory (the NPU build hands it the layers of a `LayeredModel`)."""

    def __init__(
        self,
        model: Any,
        sequences: list[list[int]],
        grids: dict[str, BlockGrid],
        method: Method,
        *,
        device: torch.device | None = None,
    ):
        self._config, self._grids, self._method = model.config, grids, method
        self.device = device or torch.device("cpu")
        with torch.inference_mode():
            self._calls = [call.to(self.device) for call in first_layer_calls(model, sequences)]

    def quantize(self, index: int, layer: Any) -> dict[str, QuantizedWeight]:
        """Quantize decoder layer `index` in place (its inputs are the quantized outputs of the layers before);
        returns its codes by full module name."""
        prefix = f"model.layers.{index}."
        grids = {name[len(prefix) :]: grid for name, grid in self._grids.items() if name.startswith(prefix)}
        quantized: dict[str, QuantizedWeight] = {}
        calls = self._calls
        with torch.inference_mode(), moved_to(self.device, layer):
            groups = _input_groups(layer, calls[0], set(grids))
            if self._method == "awq":
                _apply_awq_scales(layer, calls, groups, grids, self._config)
            for group in groups:
                importance = _hessian(layer, calls, group[0])
                for name in group:
                    linear = layer.get_submodule(name)
                    if self._method == "gptq":
                        result = gptq_quantize(linear.weight, importance, grids[name])
                    else:
                        result = quantize_rtn(linear.weight, grids[name], torch.diagonal(importance), search=True)
                    linear.weight.copy_(result.dequantize().to(linear.weight.dtype))
                    quantized[prefix + name] = result.to("cpu")
            self._calls = [call.through(layer) for call in calls]
        return quantized


def first_layer_calls(model: Any, sequences: list[list[int]]) -> list[LayerCall]:
    """What the first decoder layer receives for each sequence (the embedding and position inputs, run once)."""
    calls: list[LayerCall] = []

    def record(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        hidden = args[0] if args else kwargs.pop("hidden_states")
        calls.append(LayerCall(hidden.detach(), {k: v for k, v in kwargs.items() if k != "past_key_values"}))
        raise _Captured

    handle = model.model.layers[0].register_forward_pre_hook(record, with_kwargs=True)
    try:
        for ids in sequences:
            with suppress(_Captured):
                model(torch.tensor([ids]), use_cache=False)
    finally:
        handle.remove()
    return calls


def _input_groups(layer: Any, call: LayerCall, names: set[str]) -> list[list[str]]:
    """The layer's linears in `names`, grouped by the tensor they read, groups in the order they run."""
    groups: list[tuple[torch.Tensor, list[str]]] = []  # holding the tensors keeps their identities unique

    def note(name: str, x: torch.Tensor) -> None:
        for tensor, group in groups:
            if tensor is x:
                group.append(name)
                return
        groups.append((x, [name]))

    with _hooks(layer, names, note):
        layer(call.hidden, **call.kwargs)
    return [group for _, group in groups]


def _hessian(layer: Any, calls: list[LayerCall], name: str) -> torch.Tensor:
    """H = 2/n Σ x xᵀ over every calibration token reaching linear `name` (the layer runs only up to it)."""
    linear = layer.get_submodule(name)
    width = linear.in_features
    total = torch.zeros(width, width, device=linear.weight.device)
    count = 0

    def accumulate(_name: str, x: torch.Tensor) -> None:
        nonlocal total, count
        rows = x.reshape(-1, width).float()
        total += rows.T @ rows
        count += rows.shape[0]
        raise _Captured

    with _hooks(layer, {name}, accumulate):
        for call in calls:
            with suppress(_Captured):
                layer(call.hidden, **call.kwargs)
    return 2 * total / max(count, 1)


def _apply_awq_scales(
    layer: Any, calls: list[LayerCall], groups: list[list[str]], grids: dict[str, BlockGrid], config: Any
) -> None:
    """Search each group's input scales on this layer's float weights, then fold them (AutoAWQ's order).

    One pass over the layer gathers every group's XᵀX and Σ|x| from all calibration tokens.
    """
    widths = {group[0]: layer.get_submodule(group[0]).in_features for group in groups}
    device = next(layer.parameters()).device
    grams = {name: torch.zeros(width, width, device=device) for name, width in widths.items()}
    sums = {name: torch.zeros(width, device=device) for name, width in widths.items()}
    counts = dict.fromkeys(widths, 0)

    def gather(name: str, x: torch.Tensor) -> None:
        rows = x.reshape(-1, widths[name]).float()
        grams[name] += rows.T @ rows
        sums[name] += rows.abs().sum(dim=0)
        counts[name] += rows.shape[0]

    with _hooks(layer, set(widths), gather):
        for call in calls:
            layer(call.hidden, **call.kwargs)
    for group in groups:
        fold = _scale_folder(layer, group, config)
        if fold is None:
            continue
        count = max(counts[group[0]], 1)
        linears = [layer.get_submodule(name) for name in group]
        scales = search_input_scales(
            grams[group[0]] / count,
            sums[group[0]] / count,
            [linear.weight for linear in linears],
            [grids[name] for name in group],
        )
        for linear in linears:
            linear.weight.mul_(scales.to(linear.weight.dtype)[None, :])
        fold(scales)


def _scale_folder(layer: Any, group: list[str], config: Any) -> Callable[[torch.Tensor], None] | None:
    """How to divide a group's input by per-channel scales inside the op that produces it, or None if no op can.

    Llama, Qwen2 and Phi-3 share the names: norms feed q/k/v and gate/up; up (or the up half of gate_up) feeds down;
    v feeds o only when no key/value head is shared by several query heads.
    """
    first = group[0].split(".")[-1]
    if first in {"q_proj", "k_proj", "v_proj", "qkv_proj"}:
        return _divide_norm(layer.input_layernorm)
    if first in {"gate_proj", "up_proj", "gate_up_proj"}:
        return _divide_norm(layer.post_attention_layernorm)
    if first == "down_proj":
        mlp = layer.mlp
        up, rows = (mlp.up_proj, slice(None)) if hasattr(mlp, "up_proj") else (mlp.gate_up_proj, None)
        if rows is None:
            rows = slice(up.out_features // 2, None)
        return _divide_rows(up, rows)
    if first == "o_proj":
        heads = config.num_attention_heads
        if getattr(config, "num_key_value_heads", heads) != heads:
            return None
        attn = layer.self_attn
        if hasattr(attn, "v_proj"):
            return _divide_rows(attn.v_proj, slice(None))
        size = attn.o_proj.in_features
        return _divide_rows(attn.qkv_proj, slice(attn.qkv_proj.out_features - size, None))
    return None


def _divide_norm(norm: Any) -> Callable[[torch.Tensor], None]:
    def fold(scales: torch.Tensor) -> None:
        norm.weight.div_(scales.to(norm.weight.dtype))

    return fold


def _divide_rows(linear: Any, rows: slice) -> Callable[[torch.Tensor], None]:
    def fold(scales: torch.Tensor) -> None:
        linear.weight[rows].div_(scales.to(linear.weight.dtype)[:, None])
        if linear.bias is not None:
            linear.bias[rows].div_(scales.to(linear.bias.dtype))

    return fold


@contextmanager
def _hooks(layer: Any, names: set[str], on_input: Callable[[str, torch.Tensor], None]) -> Iterator[None]:
    handles = [
        layer.get_submodule(name).register_forward_pre_hook(lambda _m, args, name=name: on_input(name, args[0]))
        for name in names
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
