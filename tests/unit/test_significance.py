"""The champion/challenger test: real differences are called, noise is not."""

import numpy as np
import pytest
from sklearn.metrics import f1_score

from attnops.monitors.significance import compare_paired, mcnemar_exact

N_CLASSES = 20


def _labels(rng, n=600):
    return rng.integers(0, N_CLASSES, size=n)


def _noisy(rng, y, accuracy):
    """Predictions right with probability `accuracy`, otherwise a random other class."""
    wrong = rng.random(len(y)) > accuracy
    shifted = (y + rng.integers(1, N_CLASSES, size=len(y))) % N_CLASSES
    return np.where(wrong, shifted, y)


def test_point_estimates_match_sklearn():
    rng = np.random.default_rng(0)
    y = _labels(rng)
    a, b = _noisy(rng, y, 0.9), _noisy(rng, y, 0.8)
    result = compare_paired(y, a, b, n_classes=N_CLASSES)
    labels = list(range(N_CLASSES))
    expected = f1_score(y, a, labels=labels, average="macro", zero_division=0)
    assert result.candidate_macro_f1 == pytest.approx(expected)
    assert result.difference == pytest.approx(
        expected - f1_score(y, b, labels=labels, average="macro", zero_division=0)
    )


def test_identical_predictions_are_no_difference():
    rng = np.random.default_rng(1)
    y = _labels(rng)
    predictions = _noisy(rng, y, 0.9)
    result = compare_paired(y, predictions, predictions.copy(), n_classes=N_CLASSES)
    assert result.verdict == "no_difference"
    assert result.difference == result.ci_low == result.ci_high == 0
    assert result.non_inferior
    assert result.mcnemar_p_value == 1.0


def test_a_clearly_worse_candidate_is_worse_and_not_non_inferior():
    rng = np.random.default_rng(2)
    y = _labels(rng)
    champion = _noisy(rng, y, 0.95)
    candidate = champion.copy()
    broken = rng.choice(len(y), size=60, replace=False)  # 10% of inputs now wrong
    candidate[broken] = (y[broken] + 1) % N_CLASSES
    result = compare_paired(y, candidate, champion, n_classes=N_CLASSES)
    assert result.verdict == "worse"
    assert not result.non_inferior
    assert result.mcnemar_p_value < 0.001
    assert "paired-bootstrap CI" in result.reason()
    assert compare_paired(y, champion, candidate, n_classes=N_CLASSES).verdict == "better"


def test_noise_is_not_called_better_or_worse():
    """Two equally good models with different random errors: at 95% the verdict may be
    wrong in about 5% of test sets, never in a large share."""
    called = 0
    for seed in range(40):
        rng = np.random.default_rng(100 + seed)
        y = _labels(rng)
        result = compare_paired(
            y, _noisy(rng, y, 0.9), _noisy(rng, y, 0.9), n_classes=N_CLASSES, n_resamples=1000
        )
        called += result.verdict != "no_difference"
    assert called <= 4


def test_mcnemar_counts_only_discordant_pairs():
    y = np.zeros(30, dtype=int)
    candidate = np.zeros(30, dtype=int)
    champion = np.zeros(30, dtype=int)
    champion[:10] = 1  # the champion alone is wrong on 10 inputs
    assert mcnemar_exact(y, candidate, champion) == pytest.approx(2 * 0.5**10)


def test_mismatched_inputs_are_refused():
    with pytest.raises(ValueError, match="same non-empty test inputs"):
        compare_paired(np.array([0, 1]), np.array([0]), np.array([0, 1]), n_classes=2)


def test_a_handful_of_one_sided_disagreements_is_not_a_verdict():
    """Three inputs only the champion gets right: the bootstrap interval leaves zero,
    but McNemar (p=0.25) says this is noise, so neither 'worse' nor 'better' is called."""
    rng = np.random.default_rng(4)
    y = _labels(rng, n=1000)
    champion = _noisy(rng, y, 0.9)
    candidate = champion.copy()
    right = np.flatnonzero(champion == y)[:3]
    candidate[right] = (y[right] + 1) % N_CLASSES
    result = compare_paired(y, candidate, champion, n_classes=N_CLASSES)
    assert result.ci_high <= 0
    assert result.mcnemar_p_value == pytest.approx(0.25)
    assert result.verdict == "no_difference"
