"""Block-wise integer grids: the math every weight method shares (pure torch, no model code).

A weight `[N, K]` (HF layout: out × in) is cut along K into blocks of `block_size`; each block has a float scale and an
integer zero point, and `w ≈ (code − zero_point) · scale` with unsigned codes in `0 … 2^bits − 1`. Symmetric grids fix
the zero point at `2^(bits−1)`, which is MatMulNBits' default and, minus that offset, the signed int4/int8 the HTP runs.
A last block shorter than `block_size` (SmolLM2's K = 576 at block 128) is quantized on its own values only.

    >>> q = quantize_rtn(torch.tensor([[0.875, -0.375]]), BlockGrid(bits=4, block_size=2, symmetric=True))
    >>> q.scales.tolist(), q.codes.tolist(), q.dequantize().tolist()   # scale = absmax / 7
    ([[0.125]], [[15, 5]], [[0.875, -0.375]])
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# Factors on a block's range tried by the clip search; 1.0 is plain round-to-nearest. Above 1 only symmetric grids
# gain: 8/7 puts the largest magnitude on the extra negative code (−8 of −8 … 7) instead of 7.
CLIP_RATIOS = (1.0, 8 / 7, *(1.0 - 0.05 * step for step in range(1, 9)))  # 1.0, 1.14, 0.95 … 0.6


@dataclass(frozen=True)
class BlockGrid:
    bits: int
    block_size: int
    symmetric: bool

    @property
    def max_code(self) -> int:
        return (1 << self.bits) - 1

    @property
    def symmetric_zero(self) -> int:
        return 1 << (self.bits - 1)

    def blocks(self, width: int) -> int:
        return math.ceil(width / self.block_size)


@dataclass
class QuantizedWeight:
    """Integer codes and per-block parameters of one linear's weight, in the HF `[N, K]` orientation."""

    codes: torch.Tensor  # uint8 [N, K]
    scales: torch.Tensor  # float32 [N, blocks]
    zero_points: torch.Tensor  # uint8 [N, blocks]
    grid: BlockGrid

    def dequantize(self) -> torch.Tensor:
        """The float32 `[N, K]` weight these codes stand for."""
        expand = _expand(self.codes.shape[1], self.grid.block_size, self.codes.device)
        zero = self.zero_points.float()[:, expand]
        return (self.codes.float() - zero) * self.scales[:, expand]

    def to(self, device: torch.device | str) -> QuantizedWeight:
        return QuantizedWeight(self.codes.to(device), self.scales.to(device), self.zero_points.to(device), self.grid)

    def rows(self, start: int, stop: int) -> QuantizedWeight:
        """Output rows `start:stop` (fused projections such as Phi-3's qkv_proj split this way)."""
        return QuantizedWeight(self.codes[start:stop], self.scales[start:stop], self.zero_points[start:stop], self.grid)


def fit_block_params(
    weight: torch.Tensor, grid: BlockGrid, importance: torch.Tensor | None = None, *, search: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scales `[N, blocks]` and zero points `[N, blocks]` for `weight` `[N, K]`.

    Without `search` this is round-to-nearest over each block's full range. With `search` every block picks the shrink
    of its range from CLIP_RATIOS that minimizes Σ importance·(w − ŵ)²; `importance` `[K]` is the mean squared input
    of each column (GPTQ's Hessian diagonal), so the error that reaches the output is what gets minimized.
    """
    blocked = _blocked(weight.float(), grid.block_size)  # [N, blocks, block_size], last block padded by replication
    if not search:
        return _range_params(blocked, grid, 1.0)
    weights = (
        torch.ones(weight.shape[1], device=weight.device) if importance is None else importance.float().clamp(min=0)
    )
    weights = _blocked(weights[None, :], grid.block_size, fill=0.0)
    best_scale, best_zero = _range_params(blocked, grid, CLIP_RATIOS[0])
    best_error = _block_error(blocked, weights, best_scale, best_zero, grid)
    for ratio in CLIP_RATIOS[1:]:
        scale, zero = _range_params(blocked, grid, ratio)
        error = _block_error(blocked, weights, scale, zero, grid)
        better = error < best_error
        best_scale = torch.where(better, scale, best_scale)
        best_zero = torch.where(better, zero, best_zero)
        best_error = torch.minimum(error, best_error)
    return best_scale, best_zero


def quantize_with_params(
    weight: torch.Tensor, grid: BlockGrid, scales: torch.Tensor, zero_points: torch.Tensor
) -> QuantizedWeight:
    """Round `weight` `[N, K]` onto the given block grid."""
    expand = _expand(weight.shape[1], grid.block_size, weight.device)
    codes = torch.round(weight.float() / scales[:, expand]) + zero_points[:, expand].float()
    return QuantizedWeight(
        codes.clamp(0, grid.max_code).to(torch.uint8), scales.float(), zero_points.to(torch.uint8), grid
    )


def quantize_rtn(
    weight: torch.Tensor, grid: BlockGrid, importance: torch.Tensor | None = None, *, search: bool = False
) -> QuantizedWeight:
    """Round-to-nearest on a block grid (with `search`, on the importance-weighted best clip of each block)."""
    return quantize_with_params(weight, grid, *fit_block_params(weight, grid, importance, search=search))


def _range_params(blocked: torch.Tensor, grid: BlockGrid, ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
    tiny = torch.finfo(torch.float32).tiny
    if grid.symmetric:
        absmax = blocked.abs().amax(dim=-1) * ratio
        scale = (absmax / (grid.symmetric_zero - 1)).clamp(min=tiny)
        return scale, torch.full_like(scale, grid.symmetric_zero, dtype=torch.uint8)
    low = blocked.amin(dim=-1).clamp(max=0) * ratio
    high = blocked.amax(dim=-1).clamp(min=0) * ratio
    scale = ((high - low) / grid.max_code).clamp(min=tiny)
    zero = torch.round(-low / scale).clamp(0, grid.max_code).to(torch.uint8)
    return scale, zero


def _block_error(
    blocked: torch.Tensor, weights: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, grid: BlockGrid
) -> torch.Tensor:
    codes = (torch.round(blocked / scale[..., None]) + zero[..., None].float()).clamp(0, grid.max_code)
    restored = (codes - zero[..., None].float()) * scale[..., None]
    return ((blocked - restored) ** 2 * weights).sum(dim=-1)


def _blocked(matrix: torch.Tensor, block_size: int, fill: float | None = None) -> torch.Tensor:
    """`[rows, blocks, block_size]`; a short last block is padded with `fill`, or by repeating its last column,
    which leaves the block's range unchanged (the padding's error weight is 0)."""
    rows, width = matrix.shape
    padding = -width % block_size
    if padding:
        pad = matrix[:, -1:].expand(rows, padding) if fill is None else matrix.new_full((rows, padding), fill)
        matrix = torch.cat([matrix, pad], dim=1)
    return matrix.reshape(rows, -1, block_size)


def _expand(width: int, block_size: int, device: torch.device | None = None) -> torch.Tensor:
    return torch.arange(width, device=device) // block_size
