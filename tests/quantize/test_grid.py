import numpy as np
import pytest
import torch

from phiexport.quantize.grid import CLIP_RATIOS, BlockGrid, fit_block_params, quantize_rtn


def test_symmetric_rounding_by_hand():
    # absmax 0.7 → scale 0.1; codes are value/scale + 8 (the symmetric zero point)
    weight = torch.tensor([[0.7, -0.26, 0.04, -0.7]])
    q = quantize_rtn(weight, BlockGrid(bits=4, block_size=4, symmetric=True))
    assert q.scales.tolist() == [[pytest.approx(0.1)]]
    assert q.codes.tolist() == [[15, 5, 8, 1]]
    assert torch.allclose(q.dequantize(), torch.tensor([[0.7, -0.3, 0.0, -0.7]]))


def test_asymmetric_grid_holds_its_own_points_exactly():
    # values already on a grid with step 0.25 and offset −1 (zero point 4) come back unchanged
    codes = torch.tensor([[0, 3, 15, 4, 9, 12, 1, 7]])
    weight = (codes.float() - 4) * 0.25
    q = quantize_rtn(weight, BlockGrid(bits=4, block_size=8, symmetric=False))
    assert torch.equal(q.codes, codes.to(torch.uint8))
    assert torch.equal(q.dequantize(), weight)


def test_a_short_last_block_uses_only_its_own_values():
    # K = 6 at block 4: the last block holds two values, and its scale comes from them alone
    weight = torch.tensor([[7.0, 1.0, -2.0, 3.0, 0.14, -0.065]])
    q = quantize_rtn(weight, BlockGrid(bits=4, block_size=4, symmetric=True))
    assert q.scales.shape == (1, 2)
    assert q.scales[0, 1].item() == pytest.approx(0.02)
    assert torch.allclose(q.dequantize()[0, 4:], torch.tensor([0.14, -0.06]), atol=1e-6)


def test_clip_search_never_loses_to_plain_rounding_on_its_own_objective():
    torch.manual_seed(0)
    weight = torch.randn(64, 256) * torch.rand(256) ** 3  # heavy-tailed columns
    importance = torch.rand(256) * 10
    grid = BlockGrid(bits=4, block_size=32, symmetric=True)

    def weighted_error(q):
        return float((((q.dequantize() - weight) ** 2) * importance).sum())

    plain = quantize_rtn(weight, grid)
    searched = quantize_rtn(weight, grid, importance, search=True)
    assert weighted_error(searched) < 0.9 * weighted_error(plain)
    scales, _ = fit_block_params(weight, grid, importance, search=True)
    expected = _brute_force_int4_scales(weight.numpy(), importance.numpy(), block_size=32)
    np.testing.assert_allclose(scales.numpy(), expected, rtol=1e-6, atol=0)


def test_clip_search_by_hand():
    # block [1.0, 0.5]: at ratio 1 (scale 1/7) 0.5 sits at code 3.5, error (0.5/7)² = 0.0051; at 8/7 (scale 8/49)
    # 1.0 → 6.125 → 6 and 0.5 → 3.0625 → 3, error (1/49)² + (0.5/49)² = 0.00052; 0.95 gives 0.0025 + 0.0018 and every
    # ratio ≤ 0.9 at least (1 − 0.9)² = 0.01 on 1.0 alone, so 8/7 wins. Block [0.7, −0.3] lies on the grid of
    # scale 0.1 (ratio 1: codes 7 and −3), error 0, so plain rounding stays.
    weight = torch.tensor([[1.0, 0.5, 0.7, -0.3]])
    scales, zero_points = fit_block_params(weight, BlockGrid(bits=4, block_size=2, symmetric=True), search=True)
    assert scales.tolist() == [[pytest.approx(8 / 49, rel=1e-6), pytest.approx(0.1, rel=1e-6)]]
    assert zero_points.tolist() == [[8, 8]]


def _brute_force_int4_scales(weight: np.ndarray, importance: np.ndarray, block_size: int) -> np.ndarray:
    """Each block's symmetric int4 scale absmax·ratio/7 over CLIP_RATIOS with the least Σ importance·(w − ŵ)²
    (the first such ratio on a tie), one block and one ratio at a time."""
    rows, width = weight.shape
    scales = np.zeros((rows, width // block_size), dtype=np.float32)
    for row in range(rows):
        for block in range(width // block_size):
            columns = slice(block * block_size, (block + 1) * block_size)
            values, weights = weight[row, columns], importance[columns]
            candidates, errors = [], []
            for ratio in CLIP_RATIOS:
                scale = np.float32(np.abs(values).max() * np.float32(ratio) / np.float32(7))
                codes = np.clip(np.round(values / scale) + 8, 0, 15)
                candidates.append(scale)
                errors.append(float(np.sum(weights * (values - (codes - 8) * scale) ** 2)))
            scales[row, block] = candidates[int(np.argmin(errors))]
    return scales
