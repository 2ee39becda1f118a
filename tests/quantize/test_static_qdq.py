"""Calibration draws and the HTP block-layout guard of the NPU quantization."""

import numpy as np
import pytest

from phiexport.errors import UsageError
from phiexport.quantize.calibration import log_uniform_fills
from phiexport.quantize.static_qdq import check_htp_blocks

SMOLLM2 = {"hidden_size": 576, "intermediate_size": 1536, "num_attention_heads": 9, "num_key_value_heads": 3}


def test_fills_cover_short_contexts_and_stay_in_range():
    fills = log_uniform_fills(256, 2000, np.random.default_rng(0))
    assert min(fills) == 0 and max(fills) <= 255
    assert np.mean(np.asarray(fills) < 16) > 0.4  # log-uniform: half the draws below 16 of 256 (uniform: 6 %)
    assert log_uniform_fills(256, 5, np.random.default_rng(1)) == log_uniform_fills(256, 5, np.random.default_rng(1))


@pytest.mark.parametrize(("block_size", "ok"), [(32, True), (16, True), (64, False), (128, False)])
def test_htp_blocks_need_an_even_count_per_row(block_size, ok):
    if ok:
        check_htp_blocks(SMOLLM2, block_size)
    else:
        with pytest.raises(UsageError, match="width 576"):
            check_htp_blocks(SMOLLM2, block_size)
