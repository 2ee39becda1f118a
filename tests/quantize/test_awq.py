import torch

from phiexport.quantize.awq import ALPHAS, activation_scales, search_input_scales
from phiexport.quantize.grid import BlockGrid, quantize_rtn


def test_scales_follow_mean_activation_and_are_normalized():
    inputs = torch.tensor([[4.0, 0.1, 1.0], [-4.0, -0.1, 1.0]])
    scales = activation_scales(inputs.abs().mean(dim=0), 0.5)
    assert torch.allclose(scales / scales[2], torch.tensor([2.0, 0.1**0.5, 1.0]))
    assert float(scales.max() * scales.min()) == torch.tensor(1.0).item()


def test_search_protects_the_channels_with_large_inputs():
    torch.manual_seed(0)
    inputs = torch.randn(2048, 128)
    inputs[:, :4] *= 50  # outlier input channels
    weights = [torch.randn(96, 128), torch.randn(64, 128)]
    grids = [BlockGrid(bits=4, block_size=32, symmetric=True)] * 2

    def output_error(scales):
        total = 0.0
        for weight, grid in zip(weights, grids, strict=True):
            restored = quantize_rtn(weight * scales, grid).dequantize() / scales
            total += float(((inputs @ (restored - weight).T) ** 2).mean())
        return total

    found = search_input_scales(inputs.T @ inputs / len(inputs), inputs.abs().mean(dim=0), weights, grids)
    assert output_error(found) < 0.7 * output_error(torch.ones(128))
    assert found[:4].min() > found[4:].max()  # the outlier channels get the finest steps


def test_search_through_the_gram_matrix_picks_what_a_search_over_the_tokens_picks():
    torch.manual_seed(1)
    inputs = torch.randn(1024, 64) * torch.linspace(0.1, 8.0, 64)
    weights, grids = [torch.randn(32, 64)], [BlockGrid(bits=4, block_size=16, symmetric=True)]
    mean_abs = inputs.abs().mean(dim=0)

    def output_error(alpha):
        scales = activation_scales(mean_abs, alpha) if alpha else torch.ones(64)
        restored = quantize_rtn(weights[0] * scales, grids[0]).dequantize() / scales
        return float(((inputs @ (restored - weights[0]).T) ** 2).sum())

    best = min(ALPHAS, key=output_error)
    expected = activation_scales(mean_abs, best) if best else torch.ones(64)
    assert best > 0
    assert torch.equal(search_input_scales(inputs.T @ inputs / len(inputs), mean_abs, weights, grids), expected)
