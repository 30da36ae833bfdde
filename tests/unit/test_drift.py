"""Calibrated drift checks on record frames (synthetic records, real demo texts)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from attnops.demo.tickets import generate_tickets
from attnops.monitors.drift import (
    ACCURACY_CHECK,
    UNSUPPORTED_CHECK,
    DriftDetector,
    DriftResult,
    EffectFloors,
    MeanShift,
)
from attnops.monitors.reference import ReferenceProfile
from attnops.spec import MonitoringSpec


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
    assert "KS distance net of noise" in reason and "vs floor 0.15" in reason
    metrics = result.metrics()
    assert metrics["drift.detected"] == 1.0 and metrics["drift.n_tokens.score"] > 1
    assert metrics["drift.n_tokens.effect_size"] > 0.15
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
    window.loc[:30, "truncated"] = True  # 6% of the window: significant, under the 0.15 floor
    truncated = DriftDetector(reference, resamples=500).detect(window).check("truncated")
    assert truncated.significant and not truncated.material and not truncated.drifted
    window.loc[:100, "truncated"] = True  # 20%
    assert "truncated" in DriftDetector(reference, resamples=500).detect(window).drifted_checks


def test_a_tiny_shift_in_a_large_window_is_significant_but_not_material(detector):
    """Embeddings moved by 0.05 sd in 2000 records: real, detectable, not worth an alarm."""
    window = records(2000, seed=12, shift=0.05)
    embedding = detector.detect(window).check("embedding")
    assert embedding.significant and not embedding.material and not embedding.drifted
    assert embedding.score < 1 and embedding.statistic > embedding.threshold
    assert "embedding: significant, not material" in embedding.reason()
    stricter = DriftDetector(
        records(600, seed=1), resamples=1000, floors=EffectFloors(per_check={"embedding": 0.02})
    )
    assert stricter.detect(window).check("embedding").drifted


def test_effect_sizes_do_not_grow_with_the_window(detector):
    """The same shift gives about the same effect size at 300 and at 2000 records."""
    small = detector.detect(records(300, seed=13, shift=0.5))
    large = detector.detect(records(2000, seed=13, shift=0.5))
    for name in ("embedding", "confidence"):
        assert small.check(name).effect_size == pytest.approx(
            large.check(name).effect_size, rel=0.25
        ), name
        assert small.check(name).statistic / small.check(name).threshold < (
            large.check(name).statistic / large.check(name).threshold
        )


def test_a_floor_for_an_unknown_check_is_an_error():
    with pytest.raises(ValueError, match=r"effect_size_floors names unknown check\(s\) confidenc;"):
        DriftDetector(records(100, seed=1), floors=EffectFloors(per_check={"confidenc": 0.2}))


def test_mean_shift_checks_share_the_budget_and_alarm_one_way(detector):
    """Unsupported assertions: 20% against a reference 5% alarms; fewer never does."""
    window = records(300, seed=4)
    reference_flags = (np.arange(600) < 30).astype(float)

    def shifted(rate: float, floor: float = 0.05) -> DriftResult:
        flags = (np.arange(300) < rate * 300).astype(float)
        shift = MeanShift(reference_flags, flags, worse="higher", floor=floor)
        return detector.detect(window, {UNSUPPORTED_CHECK: shift})

    plain, up = detector.detect(window), shifted(0.20)
    assert len(up.checks) == len(plain.checks) + 1
    # One more check in the same budget: every threshold is a little stricter.
    assert up.check("confidence").threshold > plain.check("confidence").threshold
    assert up.drifted_checks == [UNSUPPORTED_CHECK]
    assert up.check(UNSUPPORTED_CHECK).effect_size == pytest.approx(0.15, abs=0.01)
    assert not shifted(0.0).check(UNSUPPORTED_CHECK).significant
    assert not shifted(0.20, floor=0.2).check(UNSUPPORTED_CHECK).drifted
    with pytest.raises(ValueError, match="unknown mean-shift check"):
        detector.detect(window, {"other": MeanShift(reference_flags, np.zeros(3), "higher", 0)})


def labelled(n: int, seed: int, *, wrong_share: float = 0.1, **shift) -> pd.DataFrame:
    """Records with labels; wrong predictions get low confidence, as a calibrated model's."""
    frame = records(n, seed, **shift)
    rng = np.random.default_rng(seed + 1)
    wrong = rng.random(n) < wrong_share
    frame["label"] = np.where(wrong, "another_intent", frame["prediction"])
    frame.loc[wrong, "confidence"] = rng.beta(2, 4, wrong.sum())
    return frame


def test_window_assessment_reports_each_check_and_a_severity_from_the_estimate():
    """Lengths moved: low severity; more wrong answers: the estimate drops, high severity."""
    monitoring = MonitoringSpec(window_size=300, bootstrap_resamples=1000)
    profile = ReferenceProfile(labelled(600, 1), {"out_of_scope_threshold": 0.9}, monitoring)
    calm = profile.assess(labelled(300, 3))
    assert (calm.alarm, calm.severity, calm.reasons()) == (False, "none", [])
    longer = profile.assess(labelled(300, 7, scenario="long_messages"))
    assert (longer.alarm, longer.severity) == (True, "low")
    assert {"text_chars", "n_tokens"} <= set(longer.drift.drifted_checks)
    worse = profile.assess(labelled(300, 5, wrong_share=0.4))
    assert (worse.alarm, worse.severity) == (True, "high")
    assert ACCURACY_CHECK in worse.drift.drifted_checks
    assert worse.estimated_accuracy_drop > 0.15
    assert any(r.startswith("estimated accuracy") for r in worse.reasons())
    judged = json.loads(json.dumps(worse.to_dict()))
    assert judged["severity"] == "high" and judged["alarm"] is True
    checks = {c["name"]: c for c in judged["drift"]["checks"]}
    assert {UNSUPPORTED_CHECK, ACCURACY_CHECK, "embedding"} <= set(checks)
    for check in checks.values():
        assert {"statistic", "threshold", "effect_size", "floor", "significant", "material"} <= set(
            check
        )
        assert check["alarm"] == (check["significant"] and check["material"])
    assert checks[ACCURACY_CHECK]["floor"] == monitoring.min_accuracy_drop


def test_results_are_plain_json(detector):
    result = detector.detect(records(300, seed=7, scenario="long_messages"))
    assert json.loads(json.dumps(result.to_dict()))["drifted"] is True
