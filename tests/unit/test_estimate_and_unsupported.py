"""Label-free accuracy estimate (CBPE) and unsupported assertions on windows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from attnops.models.ood import OUT_OF_SCOPE_SCORE
from attnops.monitors.estimate import PerformanceEstimator
from attnops.monitors.hallucination import UnsupportedAssertionDetector


def labelled(n: int, seed: int) -> pd.DataFrame:
    """Calibrated predictions: right with probability equal to their confidence."""
    rng = np.random.default_rng(seed)
    confidence = rng.beta(3, 1.2, n)
    right = rng.random(n) < confidence
    return pd.DataFrame(
        {
            "label": np.where(right, "a", "b"),
            "prediction": "a",
            "confidence": confidence,
        }
    )


def test_estimate_tracks_actual_accuracy_without_labels():
    estimator = PerformanceEstimator(labelled(600, seed=0))
    covered = 0
    for seed in range(1, 21):
        window = labelled(500, seed=seed)
        estimate = estimator.estimate(window["confidence"].to_numpy())
        actual = (window["label"] == window["prediction"]).mean()
        covered += estimate.accuracy_low <= actual <= estimate.accuracy_high
        assert abs(estimate.accuracy - actual) < 0.06
    assert covered >= 18, f"bounds held the actual accuracy in {covered} of 20 windows"


def test_estimate_follows_a_covariate_shift_toward_hard_inputs():
    """Fewer confident inputs (within the reference's range): the estimate drops with the
    true accuracy."""
    estimator = PerformanceEstimator(labelled(600, seed=0))
    rng = np.random.default_rng(3)
    confidence = rng.beta(2, 2, 500)
    actual = (rng.random(500) < confidence).mean()
    estimate = estimator.estimate(confidence)
    assert estimate.accuracy < 0.7
    assert abs(estimate.accuracy - actual) < 0.08


def test_estimate_needs_labels_and_data():
    with pytest.raises(ValueError, match="'label'"):
        PerformanceEstimator(pd.DataFrame({"prediction": ["a"], "confidence": [0.9]}))
    with pytest.raises(ValueError, match="empty window"):
        PerformanceEstimator(labelled(100, seed=0)).estimate(np.array([]))


def reference_records(n: int = 400, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    in_scope = n - n // 10
    embedding = np.concatenate(
        [rng.normal(0, 1, (in_scope, 8)), rng.normal(6, 1, (n - in_scope, 8))]
    ).astype(np.float32)
    return pd.DataFrame(
        {
            "label": ["a"] * in_scope + ["out_of_scope"] * (n - in_scope),
            "confidence": rng.uniform(0.5, 1.0, n),
            "embedding": list(embedding),
        }
    )


@pytest.fixture(scope="module")
def unsupported() -> UnsupportedAssertionDetector:
    """A version registered before out-of-scope scores: confidence and distance."""
    return UnsupportedAssertionDetector(
        reference_records(), out_of_scope_threshold=0.7, out_of_scope_label="out_of_scope"
    )


def window(n: int, *, far_share: float, confident: float | None, seed: int) -> pd.DataFrame:
    """`confident=None`: confidence drawn as in the reference."""
    rng = np.random.default_rng(seed)
    far = rng.random(n) < far_share
    vectors = np.where(far[:, None], rng.normal(8, 1, (n, 8)), rng.normal(0, 1, (n, 8)))
    return pd.DataFrame(
        {
            "confidence": rng.uniform(0.5, 1.0, n) if confident is None else np.full(n, confident),
            "embedding": list(vectors.astype(np.float32)),
        }
    )


def test_confident_labels_far_from_the_reference_are_unsupported(unsupported):
    found = unsupported.assess(window(500, far_share=0.3, confident=0.95, seed=1))
    # Every far input, plus the 5% of near ones beyond the reference's own 95th percentile.
    assert found.rate == pytest.approx(0.3 + 0.7 * 0.05, abs=0.04)
    assert found.alarm


def test_far_inputs_the_model_rejects_are_not_assertions(unsupported):
    """Low confidence means the model already says 'out of scope': nothing asserted."""
    found = unsupported.assess(window(500, far_share=0.3, confident=0.4, seed=2))
    assert found.rate == 0 and not found.alarm


def test_reference_like_windows_do_not_alarm(unsupported):
    alarms = [
        unsupported.assess(window(500, far_share=0.0, confident=None, seed=s)).alarm
        for s in range(10, 30)
    ]
    assert sum(alarms) <= 2


def scored(n: int, *, out_of_scope_share: float, seed: int) -> pd.DataFrame:
    """Records with an out-of-scope score: in-scope ~ N(0, 1), out-of-scope ~ N(4, 1)."""
    rng = np.random.default_rng(seed)
    out = rng.random(n) < out_of_scope_share
    return pd.DataFrame(
        {
            "label": np.where(out, "out_of_scope", "a"),
            OUT_OF_SCOPE_SCORE: rng.normal(0, 1, n) + 4 * out,
        }
    )


@pytest.fixture(scope="module")
def by_score() -> UnsupportedAssertionDetector:
    """A version with a stored out-of-scope score, thresholded at 5% in-scope rejection."""
    return UnsupportedAssertionDetector.from_summary(
        scored(2000, out_of_scope_share=0.1, seed=0),
        {"out_of_scope_label": "out_of_scope", "out_of_scope": {"threshold": 1.645}},
        distance_quantile=0.95,
    )


def test_more_out_of_scope_traffic_than_the_reference_alarms(by_score):
    # Reference: 5% of 90% in-scope + ~95% of 10% out-of-scope, about 14%.
    assert by_score.reference_rate == pytest.approx(0.9 * 0.05 + 0.1 * 0.95, abs=0.02)
    found = by_score.assess(scored(500, out_of_scope_share=0.4, seed=1))
    assert found.rate == pytest.approx(0.6 * 0.05 + 0.4 * 0.95, abs=0.05)
    assert found.alarm


def test_reference_like_traffic_does_not_alarm_by_score(by_score):
    alarms = [
        by_score.assess(scored(500, out_of_scope_share=0.1, seed=s)).alarm for s in range(10, 30)
    ]
    assert sum(alarms) <= 2
