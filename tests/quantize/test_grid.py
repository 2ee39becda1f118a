import pytest
import torch

from phiexport.quantize.grid import BlockGrid, fit_block_params, quantize_rtn


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
    assert torch.equal(scales, searched.scales)
