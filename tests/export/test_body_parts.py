"""How `--parts` cuts the decoder layers, against weight sizes worked out by hand from the published configs."""

import pytest

from phiexport.errors import UsageError
from phiexport.export.body_parts import layer_weight_bytes, plan_parts

MIB = 2**20
# Phi-4-mini: qkv 3072×(3072+2·1024), o 3072×3072, gate_up 3072×2·8192, down 8192×3072 = 100,663,296 weights
PHI4_MINI = {"hidden_size": 3072, "intermediate_size": 8192, "num_attention_heads": 24, "num_key_value_heads": 8}
# Phi-4: qkv 5120×(5120+2·1280), o 5120×5120, gate_up 5120×2·17920, down 17920×5120 = 340,787,200 weights
PHI4 = {"hidden_size": 5120, "intermediate_size": 17920, "num_attention_heads": 40, "num_key_value_heads": 10}


def test_layer_bytes_count_4_bit_codes_and_a_float_scale_per_block() -> None:
    assert layer_weight_bytes(PHI4_MINI, weight_bits=4, block_size=32) == 100_663_296 // 2 + 100_663_296 // 32 * 4
    assert layer_weight_bytes(PHI4, weight_bits=8, block_size=64) == 340_787_200 + 340_787_200 // 64 * 4


def test_auto_takes_the_fewest_parts_within_the_budget() -> None:
    mini = layer_weight_bytes(PHI4_MINI, weight_bits=4, block_size=32)  # 60 MiB a layer, 1.88 GiB in all
    parts = plan_parts(mini, 32, parts="auto", budget=512 * MIB)
    assert [(part.first, part.stop) for part in parts] == [(0, 8), (8, 16), (16, 24), (24, 32)]
    assert len(plan_parts(mini, 32, parts="auto", budget=1024 * MIB)) == 2
    phi4 = layer_weight_bytes(PHI4, weight_bits=4, block_size=32)  # 203 MiB a layer: 2 layers fit 512 MiB
    assert len(plan_parts(phi4, 40, parts="auto", budget=512 * MIB)) == 20
    assert len(plan_parts(phi4, 40, parts="auto", budget=100 * MIB)) == 40  # a layer is never cut


def test_explicit_parts_differ_by_at_most_one_layer() -> None:
    parts = plan_parts(1, 30, parts=4, budget=1)
    assert [(part.first, part.stop) for part in parts] == [(0, 7), (7, 15), (15, 22), (22, 30)]
    assert [part.stage("decode") for part in parts] == ["decode_0", "decode_1", "decode_2", "decode_3"]
    with pytest.raises(UsageError, match="more parts than the model has decoder layers"):
        plan_parts(1, 30, parts=31, budget=1)
