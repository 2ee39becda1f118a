"""Packed codes run in onnxruntime exactly as the grid says they should."""

import numpy as np
import pytest
import torch

from phiexport.quantize.grid import BlockGrid, quantize_rtn
from phiexport.quantize.onnx_weights import builder_weight, pack_matmul_nbits
from tests.matmul_nbits import matmul_nbits


@pytest.mark.parametrize(
    ("bits", "block", "symmetric"), [(4, 32, True), (4, 128, True), (4, 32, False), (4, 128, False), (8, 32, True)]
)
def test_packed_weights_compute_what_the_grid_dequantizes_to(bits, block, symmetric):
    torch.manual_seed(0)
    weight = torch.randn(48, 160)  # K = 160: at block 128 the last block is short, like SmolLM2's 576
    quantized = quantize_rtn(weight, BlockGrid(bits=bits, block_size=block, symmetric=symmetric))
    inputs = np.random.default_rng(0).standard_normal((5, 160)).astype(np.float32)
    packed, scales, zero_points = pack_matmul_nbits(quantized)
    output = matmul_nbits(inputs, packed, scales, None if symmetric else zero_points, bits=bits, block=block)
    expected = inputs @ quantized.dequantize().numpy().T
    np.testing.assert_allclose(output, expected, rtol=1e-4, atol=1e-4)


def test_builder_nodes_stack_the_hf_linears_they_fuse():
    grid = BlockGrid(bits=4, block_size=32, symmetric=True)
    torch.manual_seed(0)
    parts = {name: quantize_rtn(torch.randn(rows, 64), grid) for name, rows in (("q", 8), ("k", 4), ("v", 4))}
    llama = {f"model.layers.3.self_attn.{name}_proj": weight for name, weight in parts.items()}
    stacked = builder_weight("/model/layers.3/attn/qkv_proj/MatMul_Q4", 16, llama)
    assert torch.equal(stacked.codes, torch.cat([parts[name].codes for name in "qkv"]))

    gate_up = quantize_rtn(torch.randn(16, 64), grid)
    qkv = quantize_rtn(torch.randn(16, 64), grid)  # 8 query rows, 4 key rows, 4 value rows
    phi3 = {"model.layers.0.mlp.gate_up_proj": gate_up, "model.layers.0.self_attn.qkv_proj": qkv}
    assert torch.equal(builder_weight("/model/layers.0/mlp/gate_proj/MatMul_Q4", 8, phi3).codes, gate_up.codes[:8])
    assert torch.equal(builder_weight("/model/layers.0/mlp/up_proj/MatMul_Q4", 8, phi3).codes, gate_up.codes[8:])
    assert builder_weight("/lm_head/MatMul_Q4", 8, phi3) is None

    # the DirectML graph keeps q, k and v apart: each is cut out of the fused HF linear by its width
    assert torch.equal(builder_weight("/model/layers.0/attn/q_proj/MatMul_Q4", 8, phi3).codes, qkv.codes[:8])
    assert torch.equal(builder_weight("/model/layers.0/attn/k_proj/MatMul_Q4", 4, phi3).codes, qkv.codes[8:12])
    assert torch.equal(builder_weight("/model/layers.0/attn/v_proj/MatMul_Q4", 4, phi3).codes, qkv.codes[12:])
