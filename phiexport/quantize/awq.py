"""AWQ (Lin et al., 2023): scale each input channel of a group of linears by s = mean|x|^α before rounding, so the
channels that carry large activations get finer steps; the division by s moves into the op that produces the input.

Pure math on one group's inputs and weights; `layerwise.py` finds the groups and folds the scales. Written here to
share GPTQ's layer driver and block grid (neural-compressor's GPTQ measured worse than ours, docs/quantization.md).

    >>> x = torch.tensor([[4.0, 0.1], [-4.0, 0.1]]); w = torch.tensor([[0.3, 0.9]])
    >>> s = activation_scales(x, 1.0); float(s[0] / s[1])          # α = 1: scales follow mean |x|
    40.0
"""

from __future__ import annotations

import torch

from phiexport.quantize.grid import BlockGrid, quantize_rtn

ALPHAS = tuple(step / 20 for step in range(20))  # AutoAWQ's grid: 0, 0.05, …, 0.95


def activation_scales(inputs: torch.Tensor, alpha: float) -> torch.Tensor:
    """Per-input-channel scales `[K]` = mean|x|^α, normalized so that max·min = 1 (keeps weights well-ranged)."""
    scales = inputs.abs().float().mean(dim=0).pow(alpha).clamp(min=1e-4)
    return scales / (scales.max() * scales.min()).sqrt()


def search_input_scales(inputs: torch.Tensor, weights: list[torch.Tensor], grids: list[BlockGrid]) -> torch.Tensor:
    """The activation scales (over ALPHAS) minimizing ‖X Wᵀ − X (Q(W·s)/s)ᵀ‖² summed over the group's linears.

    `inputs` `[T, K]` are the group's inputs on calibration text; α = 0 (no scaling, s ≡ 1) is always a candidate,
    so the result is never worse than plain rounding on these inputs.
    """
    inputs = inputs.float()
    reference = [inputs @ weight.float().T for weight in weights]
    best_error, best_scales = float("inf"), torch.ones(inputs.shape[1])
    for alpha in ALPHAS:
        scales = activation_scales(inputs, alpha) if alpha else torch.ones(inputs.shape[1])
        error = 0.0
        for weight, grid, expected in zip(weights, grids, reference, strict=True):
            restored = quantize_rtn(weight.float() * scales, grid).dequantize() / scales
            error += float(((inputs @ restored.T - expected) ** 2).mean())
        if error < best_error:
            best_error, best_scales = error, scales
    return best_scales
