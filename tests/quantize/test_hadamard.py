import numpy as np
import pytest

from phiexport.quantize.hadamard import hadamard_matrix, random_orthogonal_hadamard

# 576 SmolLM2, 768 the Phi-4-mini miniature, 896 Qwen2.5-0.5B, 2048 Llama 3.2 1B, 3072 Phi-4-mini, 5120 Phi-4
ORDERS = [1, 2, 4, 12, 20, 28, 36, 256, 576, 768, 896, 1536, 2048, 3072, 5120]


@pytest.mark.parametrize("n", ORDERS)
def test_hadamard_rows_are_orthogonal_and_entries_are_plus_minus_one(n):
    h = hadamard_matrix(n)
    assert h.shape == (n, n)
    assert set(np.unique(h)) <= {-1, 1}
    product = h.astype(np.float64) @ h.T.astype(np.float64)  # exact: integer sums below 2^53, and BLAS-fast
    assert (product == n * np.eye(n)).all()


def test_order_twelve_by_hand():
    h = hadamard_matrix(12)
    assert h[0].tolist() == [1] * 12  # Paley I: first row of I + S is all ones
    assert (h @ h.T == 12 * np.eye(12)).all()


@pytest.mark.parametrize("n", [3, 120, 100, 44])
def test_unsupported_orders_are_refused_with_the_supported_list(n):
    with pytest.raises(ValueError, match=r"2\^k times one of 1, 12, 20, 28, 36"):
        hadamard_matrix(n)


def test_randomized_hadamard_is_orthogonal_and_seeded():
    a, b, c = (random_orthogonal_hadamard(576, seed) for seed in (0, 0, 1))
    np.testing.assert_allclose(a @ a.T, np.eye(576), atol=1e-12)
    assert (a == b).all()
    assert not (a == c).all()
    assert np.allclose(np.abs(a), 1 / np.sqrt(576))  # every entry ±1/√n: no channel dominates
