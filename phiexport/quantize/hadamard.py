"""Hadamard matrices (entries ±1, H Hᵀ = n I) for the hidden sizes of the models phiexport targets.

Sylvester doubling covers powers of two; Paley's constructions give the odd factors: 12 and 20 (Paley I, primes
11 and 19), 28 and 36 (Paley II, primes 13 and 17). Together: SmolLM2 576 = 36·16, Phi-4-mini 3072 = 12·256,
Phi-4 5120 = 20·256, Qwen2.5-0.5B 896 = 28·32, Llama 3.2 1B 2048 = 2^11. scipy.linalg.hadamard has powers of two only.

    >>> h = hadamard_matrix(12); bool((h @ h.T == 12 * np.eye(12)).all())
    True
"""

from __future__ import annotations

import numpy as np

# order m → (prime q, construction): Paley I gives q + 1 for q ≡ 3 (mod 4), Paley II gives 2(q + 1) for q ≡ 1 (mod 4).
_PALEY = {12: (11, 1), 20: (19, 1), 28: (13, 2), 36: (17, 2)}


def hadamard_matrix(n: int) -> np.ndarray:
    """An n×n Hadamard matrix (int64) for n = 2^k · m with m in {1, 12, 20, 28, 36}."""
    for base in (1, *_PALEY):
        power = n // base
        if n % base == 0 and power & (power - 1) == 0:
            matrix = np.ones((1, 1), dtype=np.int64) if base == 1 else _paley(base)
            sylvester = np.array([[1, 1], [1, -1]], dtype=np.int64)
            while matrix.shape[0] < n:
                matrix = np.kron(sylvester, matrix)
            return matrix
    raise ValueError(
        f"no Hadamard matrix of order {n} here; supported: 2^k times one of 1, {', '.join(map(str, _PALEY))}"
    )


def random_orthogonal_hadamard(n: int, seed: int) -> np.ndarray:
    """H · diag(±1) / √n (float64): orthogonal, with random signs from `seed` (QuaRot's randomized Hadamard)."""
    signs = np.random.default_rng(seed).choice(np.array([-1.0, 1.0]), size=n)
    return hadamard_matrix(n).astype(np.float64) * signs[None, :] / np.sqrt(n)


def _jacobsthal(q: int) -> np.ndarray:
    residues = {(x * x) % q for x in range(1, q)}
    chi = np.array([0] + [1 if d in residues else -1 for d in range(1, q)], dtype=np.int64)
    index = np.arange(q)
    return chi[(index[None, :] - index[:, None]) % q]


def _paley(order: int) -> np.ndarray:
    q, kind = _PALEY[order]
    jacobsthal = _jacobsthal(q)
    ones = np.ones(q, dtype=np.int64)
    if kind == 1:  # skew conference matrix S of order q + 1; H = I + S
        skew = np.zeros((q + 1, q + 1), dtype=np.int64)
        skew[0, 1:], skew[1:, 0], skew[1:, 1:] = ones, -ones, jacobsthal
        return np.eye(q + 1, dtype=np.int64) + skew
    conference = np.zeros((q + 1, q + 1), dtype=np.int64)  # symmetric conference matrix C of order q + 1
    conference[0, 1:], conference[1:, 0], conference[1:, 1:] = ones, ones, jacobsthal
    plus = np.array([[1, -1], [-1, -1]], dtype=np.int64)
    minus = np.array([[1, 1], [1, -1]], dtype=np.int64)
    return np.kron(conference, minus) + np.kron(np.eye(q + 1, dtype=np.int64), plus)
