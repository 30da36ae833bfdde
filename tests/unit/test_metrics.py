"""Evaluation metrics on hand-computed cases."""

import numpy as np
import pytest

from attnops.models.metrics import (
    classification_metrics,
    expected_calibration_error,
    length_bucket,
    out_of_scope_threshold,
    slice_metrics,
)


def test_ece_is_zero_when_confidence_matches_accuracy_and_gap_otherwise():
    confidence = np.array([0.75] * 4 + [0.25] * 4)
    correct = np.array([1, 1, 1, 0, 1, 0, 0, 0], dtype=bool)
    ece, bins = expected_calibration_error(confidence, correct, n_bins=4)
    assert ece == pytest.approx(0.0)
    assert bins["count"].sum() == 8
    overconfident, _ = expected_calibration_error(np.full(4, 0.9), np.array([1, 0, 1, 0], bool), 10)
    assert overconfident == pytest.approx(0.4)


def test_out_of_scope_threshold_rejects_at_most_the_allowed_share():
    in_scope = np.linspace(0.5, 0.99, 100)
    threshold = out_of_scope_threshold(in_scope, 0.05)
    assert (in_scope < threshold).mean() <= 0.05
    assert (in_scope < threshold).mean() == pytest.approx(0.05)


def test_length_buckets_and_slices():
    buckets = length_bucket(np.array([3, 16, 17, 40, 200]), (16, 32, 64))
    assert buckets.tolist() == ["<=16", "<=16", "17-32", "33-64", ">64"]
    rows = slice_metrics(
        np.array([0, 1, 0, 1]), np.array([0, 1, 1, 1]), {"channel": np.array(["a", "a", "b", "b"])}
    )
    by_value = {row["value"]: row for row in rows}
    assert by_value["a"]["accuracy"] == 1.0 and by_value["b"]["accuracy"] == 0.5
    assert by_value["b"]["n"] == 2


def test_classification_metrics_per_class_and_confusion():
    m = classification_metrics(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 2]), ["x", "y", "z"])
    assert m["accuracy"] == 0.75
    assert m["per_class"]["x"]["recall"] == 0.5
    assert m["per_class"]["y"]["precision"] == 0.5
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]
