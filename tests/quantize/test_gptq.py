import torch

from phiexport.quantize.gptq import gptq_quantize
from phiexport.quantize.grid import BlockGrid, quantize_rtn


def test_uncorrelated_inputs_make_gptq_plain_rounding():
    torch.manual_seed(0)
    weight = torch.randn(32, 64)
    grid = BlockGrid(bits=4, block_size=32, symmetric=True)
    gptq = gptq_quantize(weight, torch.eye(64), grid, damping=0.0, act_order=False, clip_search=False)
    assert torch.equal(gptq.codes, quantize_rtn(weight, grid).codes)


def test_error_of_one_column_moves_to_a_correlated_column_by_hand():
    """W = [0.35, 0.26, 0.7], H = [[1, ½, 0], [½, 1, 0], [0, 0, 1]], one block, scale 0.7 / 7 = 0.1.

    Column 0 rounds to 0.4 (3.5 → 4, half to even): error e = −0.05. Minimizing ΔᵀHΔ with Δ₀ fixed gives
    Δ₁ = −½Δ₀, i.e. w₁ ← w₁ + ½e = 0.235, which rounds to 2 (0.2) where plain rounding gives 3 (0.3).
    """
    weight = torch.tensor([[0.35, 0.26, 0.7]])
    hessian = torch.tensor([[1.0, 0.5, 0.0], [0.5, 1.0, 0.0], [0.0, 0.0, 1.0]])
    grid = BlockGrid(bits=4, block_size=4, symmetric=True)
    gptq = gptq_quantize(weight, hessian, grid, damping=0.0, act_order=False, clip_search=False)
    assert (gptq.codes.int() - 8).tolist() == [[4, 2, 7]]
    assert (quantize_rtn(weight, grid).codes.int() - 8).tolist() == [[4, 3, 7]]


def test_gptq_lowers_the_output_error_on_correlated_inputs():
    torch.manual_seed(0)
    weight = torch.randn(64, 256)
    inputs = torch.randn(4096, 256) @ torch.randn(256, 256) * 0.1 + torch.randn(4096, 256)
    inputs[:, :5] *= 20  # a few outlier channels, as in real activations
    hessian = 2 * inputs.T @ inputs / len(inputs)
    grid = BlockGrid(bits=4, block_size=32, symmetric=True)

    def output_error(q):
        return float((((q.dequantize() - weight) @ inputs.T) ** 2).mean())

    rtn = quantize_rtn(weight, grid)
    assert output_error(gptq_quantize(weight, hessian, grid)) < 0.5 * output_error(rtn)
    assert output_error(gptq_quantize(weight, hessian, grid, act_order=False, clip_search=False)) < output_error(rtn)
