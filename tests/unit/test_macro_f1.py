"""The training loop's checkpoint score equals sklearn's macro-F1 (it runs without sklearn)."""

import numpy as np
import pytest
from sklearn.metrics import f1_score

from attnops.models.train_steps import macro_f1


@pytest.mark.parametrize("seed", range(20))
def test_macro_f1_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    n_classes, n = rng.integers(2, 9), rng.integers(1, 60)
    labels, predicted = rng.integers(0, n_classes, n), rng.integers(0, n_classes, n)
    expected = f1_score(labels, predicted, average="macro", zero_division=0)
    assert macro_f1(labels, predicted) == pytest.approx(expected, abs=1e-12)


def test_a_class_only_predicted_counts_as_zero():
    assert macro_f1(np.array([0, 0]), np.array([0, 1])) == pytest.approx((2 / 3 + 0) / 2)
