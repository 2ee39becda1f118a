"""AWQ (Lin et al., 2023): scale each input channel of a group of linears by s = mean|x|^α before rounding, so the
channels that carry large activations get finer steps; the division by s moves into the op that produces the input.

Pure math on one group's input statistics and weights; `layerwise.py` finds the groups, gathers the statistics over
every calibration token and folds the scales. Written here to share GPTQ's layer driver and block grid
(neural-compressor's GPTQ measured worse than ours, docs/quantization.md).

    >>> x = torch.tensor([[4.0, 0.1], [-4.0, 0.1]])
    >>> s = activation_scales(x.abs().mean(dim=0), 1.0); float(s[0] / s[1])     # α = 1: scales follow mean |x|
    40.0
"""

from __future__ import annotations

import torch

from phiexport.quantize.grid import BlockGrid, quantize_rtn

ALPHAS = tuple(step / 20 for step in range(20))  # AutoAWQ's grid: 0, 0.05, …, 0.95


def activation_scales(mean_abs: torch.Tensor, alpha: float) -> torch.Tensor:
    """Per-input-channel scales `[K]` = mean|x|^α, normalized so that max·min = 1 (keeps weights well-ranged)."""
    scales = mean_abs.float().pow(alpha).clamp(min=1e-4)
    return scales / (scales.max() * scales.min()).sqrt()


def search_input_scales(
    gram: torch.Tensor, mean_abs: torch.Tensor, weights: list[torch.Tensor], grids: list[BlockGrid]
) -> torch.Tensor:
    """The activation scales (over ALPHAS) minimizing the group's output error Σ ‖X (W − Q(W·s)/s)ᵀ‖².

    `gram` `[K, K]` is XᵀX/n and `mean_abs` `[K]` the mean |x| over the group's calibration inputs X: the error is
    tr(ΔW · XᵀX · ΔWᵀ), so every token counts at the cost of one K×K product per candidate instead of one pass
    over the tokens. α = 0 (s ≡ 1) is always a candidate, so the result is never worse than plain rounding.
    """
    gram = gram.float()
    best_error, best_scales = float("inf"), torch.ones(gram.shape[0], device=gram.device)
    for alpha in ALPHAS:
        scales = activation_scales(mean_abs, alpha) if alpha else torch.ones(gram.shape[0], device=gram.device)
        error = 0.0
        for weight, grid in zip(weights, grids, strict=True):
            delta = weight.float() - quantize_rtn(weight.float() * scales, grid).dequantize() / scales
            error += float(((delta @ gram) * delta).sum())
        if error < best_error:
            best_error, best_scales = error, scales
    return best_scales
