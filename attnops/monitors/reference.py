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
from attnops.monitors.drift import DriftDetector, DriftResult
from attnops.monitors.estimate import PerformanceEstimate, PerformanceEstimator
from attnops.monitors.hallucination import UnsupportedAssertionDetector, UnsupportedAssertions
from attnops.spec import MonitoringSpec

DRIFT_CALIBRATION = "reference_drift_calibration.json"


def redact_records(records: pd.DataFrame) -> pd.DataFrame:
    """Copy of `records` with `has_pii` set from the raw `text` and the text redacted."""
    redacted = records.copy()
    texts = redacted["text"].fillna("").astype(str).tolist()
    found = pii.find_pii(texts)
    redacted["has_pii"] = [bool(hits) for hits in found]
    redacted["text"] = pii.redact(texts, found)
    return redacted


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
    estimate: PerformanceEstimate
    unsupported: UnsupportedAssertions
    pii_share: float | None
    n: int

    @property
    def alarm(self) -> bool:
        """Drift in any check, or more unsupported assertions than the reference explains."""
        return self.drift.drifted or self.unsupported.alarm

    def reasons(self) -> list[str]:
        reasons = [c.reason() for c in self.drift.checks if c.drifted]
        found = self.unsupported
        if found.alarm:
            reasons.append(
                f"unsupported assertions: {found.rate:.1%} of the window's answers have inputs "
                f"out of scope (alarm above {found.alarm_rate:.1%}, reference "
                f"{found.reference_rate:.1%})"
            )
        return reasons

    def metrics(self) -> dict[str, float]:
        flat = self.drift.metrics() | self.estimate.metrics() | self.unsupported.metrics()
        flat |= {"window_records": float(self.n), "alarm": float(self.alarm)}
        if self.pii_share is not None:
            flat["pii_share"] = self.pii_share
        return flat

    def to_dict(self) -> dict[str, object]:
        return {
            "alarm": self.alarm,
            "reasons": self.reasons(),
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
        self.drift = _detector(records, monitoring)
        self.estimator = PerformanceEstimator(records)
        self.unsupported = UnsupportedAssertionDetector.from_summary(
            records, summary, monitoring.unsupported_distance_quantile
        )

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
        return WindowAssessment(
            drift=self.drift.detect(window),
            estimate=self.estimator.estimate(window["confidence"].to_numpy()),
            unsupported=self.unsupported.assess(window),
            pii_share=float(window["has_pii"].mean()) if "has_pii" in window else None,
            n=len(window),
        )


def _detector(records: pd.DataFrame, monitoring: MonitoringSpec) -> DriftDetector:
    return DriftDetector(
        records,
        false_alarm_rate=monitoring.false_alarm_rate,
        resamples=monitoring.bootstrap_resamples,
        max_vector_rows=monitoring.max_vector_rows,
    )
