"""A version's reference profile on disk, and the judgement of a window of records against it.

At registration the test split's records (`attnops.models.records`) are stored with the
version: PII found in each text is noted (`has_pii`) and then redacted, so the profile,
the reports built from it and the MLflow UI never show it. The drift thresholds at the
spec's window size are calibrated right away and stored too, so a reviewer sees what a
later alarm will be measured against.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from attnops.models.profile import PROFILE_SUMMARY, PROFILE_TABLE
from attnops.monitors import pii
from attnops.monitors.drift import (
    ACCURACY_CHECK,
    UNSUPPORTED_CHECK,
    DriftDetector,
    DriftResult,
    EffectFloors,
    MeanShift,
)
from attnops.monitors.estimate import PerformanceEstimate, PerformanceEstimator
from attnops.monitors.hallucination import UnsupportedAssertionDetector, UnsupportedAssertions
from attnops.spec import MonitoringSpec, PipelineSpec

DRIFT_CALIBRATION = "reference_drift_calibration.json"


def redact_records(records: pd.DataFrame) -> pd.DataFrame:
    """Copy of `records` with `has_pii` set from the raw `text` and the text redacted."""
    redacted = records.copy()
    texts = redacted["text"].fillna("").astype(str).tolist()
    found = pii.find_pii(texts)
    redacted["has_pii"] = [bool(hits) for hits in found]
    redacted["text"] = pii.redact(texts, found)
    return redacted


def save_task_reference(records: pd.DataFrame, out_dir: Path, spec: PipelineSpec) -> list[Path]:
    """The spec's task's reference profile (see `save_reference`), written into `out_dir`."""
    if spec.task == "generation":
        # torch and transformers (via the generation evaluation): not for the monitor's import
        from attnops.monitors.generation_reference import save_generation_reference

        return save_generation_reference(records, out_dir)
    return save_reference(records, out_dir, spec.monitoring)


def save_reference(records: pd.DataFrame, out_dir: Path, monitoring: MonitoringSpec) -> list[Path]:
    """Write the redacted reference records and their drift calibration into `out_dir`.

    Args:
        records: the evaluation's reference records, raw `text` included.
        monitoring: the spec's monitoring section (window size, false-alarm rate).

    Returns:
        The files written: the records table and the calibration JSON.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    table = redact_records(records)
    paths = [out_dir / PROFILE_TABLE, out_dir / DRIFT_CALIBRATION]
    table.to_parquet(paths[0], index=False)
    # Bootstrap windows of the reference at the spec's size: what an alarm will mean.
    rng = np.random.default_rng(0)
    sample = table.iloc[rng.choice(len(table), monitoring.window_size, replace=True)]
    calibration = _detector(table, monitoring).detect(sample.reset_index(drop=True))
    paths[1].write_text(
        json.dumps(
            {
                "window_size": monitoring.window_size,
                "false_alarm_rate": monitoring.false_alarm_rate,
                "thresholds": {c.name: c.threshold for c in calibration.checks},
                "effect_size_floors": {c.name: c.floor for c in calibration.checks},
                "statistic_kinds": {c.name: c.kind for c in calibration.checks},
                "window_rows_per_check": {c.name: c.n_current for c in calibration.checks},
            },
            indent=2,
        )
    )
    return paths


@dataclass(frozen=True)
class WindowAssessment:
    drift: DriftResult
    """Every check of the window, the unsupported-assertion rate and the estimated
    accuracy among them (`drift.UNSUPPORTED_CHECK`, `drift.ACCURACY_CHECK`)."""
    estimate: PerformanceEstimate
    unsupported: UnsupportedAssertions
    pii_share: float | None
    n: int
    reference_accuracy: float
    """The reference's accuracy (out-of-scope inputs counted wrong, as live)."""

    @property
    def alarm(self) -> bool:
        """A check both significant and material: drift, unsupported assertions or accuracy."""
        return self.drift.drifted

    @property
    def estimated_accuracy_drop(self) -> float:
        return self.reference_accuracy - self.estimate.accuracy

    @property
    def severity(self) -> str:
        """`high` when the estimated accuracy dropped materially, `low` for other alarms
        (the inputs moved, the estimate holds), `none` without an alarm."""
        if not self.alarm:
            return "none"
        accuracy = self.drift.check(ACCURACY_CHECK)
        return "high" if accuracy is not None and accuracy.drifted else "low"

    def reasons(self) -> list[str]:
        reasons = []
        for check in self.drift.checks:
            if not check.drifted:
                continue
            if check.name == UNSUPPORTED_CHECK:
                found = self.unsupported
                reasons.append(
                    f"unsupported assertions: {found.rate:.1%} of the window's answers have "
                    f"inputs out of scope (reference {found.reference_rate:.1%}; "
                    f"{check.reason()})"
                )
            elif check.name == ACCURACY_CHECK:
                e = self.estimate
                reasons.append(
                    f"estimated accuracy {e.accuracy:.3f} ({e.accuracy_low:.3f}-"
                    f"{e.accuracy_high:.3f}) vs reference {self.reference_accuracy:.3f} "
                    f"({check.reason()})"
                )
            else:
                reasons.append(check.reason())
        return reasons

    def metrics(self) -> dict[str, float]:
        flat = self.drift.metrics() | self.estimate.metrics() | self.unsupported.metrics()
        flat |= {
            "window_records": float(self.n),
            "alarm": float(self.alarm),
            "severity_high": float(self.severity == "high"),
            "estimated_accuracy_drop": self.estimated_accuracy_drop,
        }
        if self.pii_share is not None:
            flat["pii_share"] = self.pii_share
        return flat

    def to_dict(self) -> dict[str, object]:
        """The judgement: per check statistic, threshold, effect size, floor, significant,
        material (alarm = both), and the severity from the estimated accuracy drop."""
        return {
            "alarm": self.alarm,
            "severity": self.severity,
            "reasons": self.reasons(),
            "estimated_accuracy": {
                "reference": self.reference_accuracy,
                "window": self.estimate.accuracy,
                "window_low": self.estimate.accuracy_low,
                "window_high": self.estimate.accuracy_high,
                "drop": self.estimated_accuracy_drop,
            },
            "metrics": self.metrics(),
            "drift": self.drift.to_dict(),
        }


class ReferenceProfile:
    """Everything a window is judged against, prepared once per version.

    Args:
        records: the stored (redacted) reference records.
        summary: the version's `reference_profile.json` (thresholds, labels).
        monitoring: the spec's monitoring section.
    """

    def __init__(
        self, records: pd.DataFrame, summary: dict[str, object], monitoring: MonitoringSpec
    ) -> None:
        self.records = records
        self.summary = summary
        self.monitoring = monitoring
        self.drift = _detector(records, monitoring)
        self.estimator = PerformanceEstimator(records)
        self.reference_correct = self.estimator.correct_probability(records["confidence"])
        self.unsupported = UnsupportedAssertionDetector.from_summary(
            records, summary, monitoring.unsupported_distance_quantile
        )
        # Which reference rows are flagged does not matter to a bootstrap of exchangeable
        # rows, only how many: the detector's reference rate says that.
        flagged = round(self.unsupported.reference_rate * len(records))
        self.reference_unsupported = (np.arange(len(records)) < flagged).astype(float)

    @classmethod
    def load(cls, folder: Path, monitoring: MonitoringSpec) -> ReferenceProfile:
        """Read `reference_profile.parquet` and `reference_profile.json` from `folder`."""
        table, summary = folder / PROFILE_TABLE, folder / PROFILE_SUMMARY
        for path in (table, summary):
            if not path.is_file():
                raise FileNotFoundError(
                    f"{path} not found: the version has no reference profile; "
                    "register it with this attnops version (attnops train)"
                )
        raw = json.loads(summary.read_text())
        raw.pop("embedding_projection", None)
        return cls(pd.read_parquet(table), raw, monitoring)

    def assess(self, window: pd.DataFrame) -> WindowAssessment:
        """Drift, estimated accuracy and unsupported assertions of one window of records."""
        if len(window) == 0:
            raise ValueError("the window holds no records")
        missing = [c for c in ("prediction", "confidence", "embedding") if c not in window]
        if missing:
            raise ValueError(f"window records lack column(s) {', '.join(missing)}")
        confidence = window["confidence"].to_numpy()
        m = self.monitoring
        shifts = {
            UNSUPPORTED_CHECK: MeanShift(
                self.reference_unsupported,
                self.unsupported.flags(window).astype(float),
                worse="higher",
                floor=m.min_unsupported_increase,
            ),
            ACCURACY_CHECK: MeanShift(
                self.reference_correct,
                self.estimator.correct_probability(confidence),
                worse="lower",
                floor=m.min_accuracy_drop,
            ),
        }
        return WindowAssessment(
            drift=self.drift.detect(window, shifts),
            estimate=self.estimator.estimate(confidence),
            unsupported=self.unsupported.assess(window),
            pii_share=float(window["has_pii"].mean()) if "has_pii" in window else None,
            n=len(window),
            reference_accuracy=float(self.reference_correct.mean()),
        )


def _detector(records: pd.DataFrame, monitoring: MonitoringSpec) -> DriftDetector:
    return DriftDetector(
        records,
        false_alarm_rate=monitoring.false_alarm_rate,
        resamples=monitoring.bootstrap_resamples,
        max_vector_rows=monitoring.max_vector_rows,
        floors=EffectFloors(
            ks_distance=monitoring.min_ks_distance,
            total_variation=monitoring.min_total_variation,
            mmd=monitoring.min_mmd,
            per_check=monitoring.effect_size_floors,
        ),
    )
