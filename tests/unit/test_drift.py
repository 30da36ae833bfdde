"""Calibrated drift checks on record frames (synthetic records, real demo texts)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from attnops.demo.tickets import generate_tickets
from attnops.monitors.drift import DriftDetector


def records(n: int, seed: int, *, scenario: str = "normal", shift: float = 0.0) -> pd.DataFrame:
    """Records as the model would log them; `shift` moves embeddings and confidence."""
    rng = np.random.default_rng(seed)
    tickets = generate_tickets(n, seed=seed, scenario=scenario, out_of_scope_share=0.1)
    frame = pd.DataFrame(
        {
            "text": tickets["text"],
            "text_chars": tickets["text"].str.len(),
            "n_tokens": tickets["text"].str.split().str.len() + 2,
            "truncated": rng.random(n) < 0.02,
            "prediction": tickets["intent"].replace("out_of_scope", "track_order"),
            "confidence": np.clip(rng.beta(8, 1.5 + 3 * shift, n), 0, 1),
            "has_pii": tickets["has_pii"],
        }
    )
    frame["embedding"] = list(rng.normal(shift, 1.0, size=(n, 16)).astype(np.float32))
    sampled = rng.random(n) < 0.3
    for head in range(4):
        frame[f"l0h{head}"] = np.where(sampled, rng.beta(5, 2, n), np.nan)
    return frame


@pytest.fixture(scope="module")
def detector() -> DriftDetector:
    return DriftDetector(records(600, seed=1), resamples=1000)


def test_same_distribution_windows_rarely_alarm(detector):
    """The calibrated thresholds keep the all-checks false-alarm rate near its target (5%)."""
    alarms = [detector.detect(records(300, seed=100 + s)).drifted for s in range(30)]
    assert sum(alarms) <= 3, f"{sum(alarms)} of 30 same-distribution windows alarmed"


def test_each_kind_of_shift_is_found_by_its_check(detector):
    """Long messages move lengths; a new product line moves words; embeddings move MMD."""
    long = detector.detect(records(300, seed=7, scenario="long_messages"))
    assert {"text_chars", "n_tokens", "text_content"} <= set(long.drifted_checks)
    new_line = detector.detect(records(300, seed=8, scenario="new_product_line"))
    assert "text_content" in new_line.drifted_checks
    moved = detector.detect(records(300, seed=9, shift=0.5))
    assert {"embedding", "confidence"} <= set(moved.drifted_checks)
    pii = detector.detect(records(300, seed=10, scenario="pii_surge"))
    assert "has_pii" in pii.drifted_checks


def test_threshold_is_calibrated_for_the_window_size(detector):
    """Smaller windows are noisier, so the same check needs a larger statistic to alarm."""
    small = {c.name: c.threshold for c in detector.detect(records(50, seed=3)).checks}
    large = {c.name: c.threshold for c in detector.detect(records(2000, seed=3)).checks}
    assert small["text_chars"] > 2 * large["text_chars"]
    assert small["embedding"] > large["embedding"]


def test_result_explains_itself_and_flattens_for_mlflow(detector):
    result = detector.detect(records(300, seed=7, scenario="long_messages"))
    reason = next(c for c in result.checks if c.name == "n_tokens").reason()
    assert "n_tokens: drift" in reason and "calibrated at n=300" in reason
    metrics = result.metrics()
    assert metrics["drift.detected"] == 1.0 and metrics["drift.n_tokens.score"] > 1
    assert result.to_dict()["drifted_checks"] == result.drifted_checks


def test_only_shared_columns_are_checked_and_none_is_an_error(detector):
    window = records(200, seed=4)[["prediction", "confidence"]]
    assert detector.check_names(window) == ["confidence", "prediction"]
    with pytest.raises(ValueError, match="shares no monitored column"):
        detector.detect(pd.DataFrame({"other": [1, 2, 3]}))


def test_unseen_predicted_labels_count_as_drift(detector):
    window = records(300, seed=5)
    window.loc[: len(window) // 3, "prediction"] = "a_label_the_reference_never_had"
    assert "prediction" in detector.detect(window).drifted_checks


def test_one_odd_record_does_not_trip_a_column_constant_in_the_reference():
    reference = records(600, seed=1).assign(truncated=False)
    window = records(500, seed=2).assign(truncated=False)
    window.loc[0, "truncated"] = True
    result = DriftDetector(reference, resamples=500).detect(window)
    assert "truncated" not in result.drifted_checks
    window.loc[:30, "truncated"] = True
    assert "truncated" in DriftDetector(reference, resamples=500).detect(window).drifted_checks


def test_results_are_plain_json(detector):
    result = detector.detect(records(300, seed=7, scenario="long_messages"))
    assert json.loads(json.dumps(result.to_dict()))["drifted"] is True
