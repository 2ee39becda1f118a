import math

import numpy as np
import pytest

from phiexport.evaluate.metrics import (
    TokenScores,
    first_divergence,
    kl_divergence,
    log_softmax,
    negative_log_likelihood,
    perplexity,
    score_tokens,
    top1_agreement,
)


def test_log_softmax_matches_hand_computed_probabilities():
    logits = np.array([[0.0, math.log(3.0)], [1000.0, 1000.0]])
    expected = np.log(np.array([[0.25, 0.75], [0.5, 0.5]]))
    np.testing.assert_allclose(log_softmax(logits), expected, atol=1e-12)


def test_kl_divergence_hand_computed():
    ref = np.log(np.array([[0.5, 0.5], [0.9, 0.1]]))
    pkg = np.log(np.array([[0.25, 0.75], [0.9, 0.1]]))
    # 0.5 ln(0.5/0.25) + 0.5 ln(0.5/0.75) = 0.5 ln 2 + 0.5 ln(2/3); identical rows give 0
    expected = [0.5 * math.log(2) + 0.5 * math.log(2 / 3), 0.0]
    np.testing.assert_allclose(kl_divergence(ref, pkg), expected, atol=1e-12)


def test_kl_is_asymmetric_and_nonnegative():
    p = np.log(np.array([[0.7, 0.2, 0.1]]))
    q = np.log(np.array([[0.1, 0.2, 0.7]]))
    forward, backward = kl_divergence(p, q)[0], kl_divergence(q, p)[0]
    assert forward > 0 and backward > 0
    assert forward == pytest.approx(0.7 * math.log(7) + 0.1 * math.log(1 / 7))


def test_perplexity_of_known_nll():
    logprobs = np.log(np.array([[0.5, 0.5], [0.125, 0.875]]))
    nll = negative_log_likelihood(logprobs, np.array([0, 0]))
    np.testing.assert_allclose(nll, [math.log(2), math.log(8)])
    assert perplexity(nll) == pytest.approx(4.0)  # exp(mean(ln 2, ln 8)) = exp(2 ln 2)


def test_top1_agreement_per_row():
    ref = np.array([[1.0, 2.0, 0.0], [3.0, 0.0, 0.0]])
    pkg = np.array([[0.0, 5.0, 1.0], [0.0, 0.0, 1.0]])
    assert top1_agreement(ref, pkg).tolist() == [True, False]


@pytest.mark.parametrize(
    ("reference", "package", "expected"),
    [([1, 2, 3], [1, 2, 3], None), ([1, 2, 3], [1, 2, 4], 2), ([1, 2], [1, 2, 3], 2), ([5], [6], 0), ([], [], None)],
)
def test_first_divergence(reference, package, expected):
    assert first_divergence(reference, package) == expected


def test_token_scores_summary_pools_tokens_across_sequences():
    scores = TokenScores()
    uniform = np.zeros((1, 2))
    skewed = np.array([[0.0, math.log(3.0)]])  # p = [1/4, 3/4]
    scores.add(uniform, uniform, np.array([0]))  # KL 0, agree (argmax ties pick 0 both), nll ln 2 both
    scores.add(uniform, skewed, np.array([1]))  # KL(uniform‖skewed), disagree, pkg nll ln(4/3)
    summary = scores.summary()
    kl_second = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert summary["tokens"] == 2
    assert summary["kl_mean"] == pytest.approx(kl_second / 2)
    assert summary["kl_max"] == pytest.approx(kl_second)
    assert summary["top1_agreement"] == pytest.approx(0.5)
    assert summary["ppl_reference"] == pytest.approx(2.0)
    assert summary["ppl_package"] == pytest.approx(math.exp((math.log(2) + math.log(4 / 3)) / 2))
    assert summary["ppl_ratio"] == pytest.approx(summary["ppl_package"] / 2.0)


def test_score_tokens_in_row_blocks_equals_scoring_every_row_at_once():
    rng = np.random.default_rng(0)
    ref, pkg = rng.normal(size=(100, 50)) * 3, rng.normal(size=(100, 50)) * 3
    targets = rng.integers(0, 50, 100)
    scores = score_tokens(ref, pkg, targets)
    ref_lp, pkg_lp = log_softmax(ref), log_softmax(pkg)
    assert np.allclose(scores["kl"], kl_divergence(ref_lp, pkg_lp), rtol=0, atol=1e-12)
    assert scores["agree"] == (ref.argmax(1) == pkg.argmax(1)).tolist()
    assert np.allclose(scores["pkg_nll"], -pkg_lp[np.arange(100), targets], rtol=0, atol=1e-12)
    assert len(scores["ref_nll"]) == 100
