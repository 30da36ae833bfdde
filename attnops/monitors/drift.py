"""Drift of a window of records against a version's reference profile, with calibrated thresholds.

Every check compares the same column of the two record frames (`attnops.models.records`)
with a two-sample statistic:

- numeric columns (lengths, tokenizer statistics, confidence, PII share): Kolmogorov-Smirnov D;
- categorical columns (predicted label) and the words of the text: two-sample chi-square,
  words outside the reference vocabulary pooled into one "unseen" cell;
- vector columns (the model's pooled embeddings, attention entropy per head): squared MMD
  with an RBF kernel, on a bounded sample.

A default p < 0.05 per check would raise an alarm on most same-distribution windows once a
dozen checks run together, and fixed thresholds (Evidently's ROC-AUC > 0.55) false-alarm at
small windows. So each threshold is calibrated on the reference itself: the statistic's
distribution is bootstrapped with both samples drawn from the reference at the actual window
size, and the threshold is its (1 - alpha / checks) quantile. A window of the reference's
own distribution then raises any alarm with probability at most about `false_alarm_rate`.
Bootstrap samples are drawn as multinomial counts over the reference rows, so calibration
costs the same for a window of 500 records as for 100,000.

Significant is not the same as worth acting on: real traffic is never exactly the reference
(a few more in-scope queries than the test split had shifts confidence a little), and at a
few hundred records such a shift is significant. So a check alarms only when it is also
*material*: its effect size reaches a floor (`EffectFloors`, from the spec). Each effect
size is a distance that grows in proportion to the share of traffic that changed, and not
with the window size, net of what sampling noise alone gives at this size: the root of the
squared distance minus its mean over the same bootstrap (noise adds in quadrature):

- KS D is itself the largest gap between the two CDFs;
- for labels and words, the total variation distance of their frequencies (the share of
  the mass that would have to move);
- for vectors, the MMD (root of the unbiased MMD^2, already a squared distance).

Per-record scores whose mean matters in one direction (the unsupported-assertion rate, the
label-free accuracy estimate) are checks of the same kind (`MeanShift`): calibrated by the
same bootstrap, inside the same false-alarm budget, with their own floors.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
from scipy import sparse, stats

from attnops.models.attention_columns import entropy_head
from attnops.models.record_columns import TEXT_FEATURES
from attnops.monitors.two_sample import (
    BootstrapCounts,
    RbfKernel,
    WordBag,
    chi2,
    chi2_null,
    ks_null,
    mean_shift_null,
    total_variation,
)

NUMERIC_CHECKS = (*TEXT_FEATURES, "confidence", "has_pii")
CATEGORICAL_CHECKS = ("prediction",)
TEXT_CHECK = "text_content"
EMBEDDING_CHECK = "embedding"
ATTENTION_CHECK = "attention_entropy"
UNSUPPORTED_CHECK = "unsupported_assertions"
ACCURACY_CHECK = "estimated_accuracy"
SHIFT_CHECKS = (UNSUPPORTED_CHECK, ACCURACY_CHECK)
ALL_CHECKS = (
    *NUMERIC_CHECKS,
    *CATEGORICAL_CHECKS,
    TEXT_CHECK,
    EMBEDDING_CHECK,
    ATTENTION_CHECK,
    *SHIFT_CHECKS,
)
EFFECT_SIZES = {
    "KS D": "KS distance net of noise",
    "chi-square": "total variation net of noise",
    "MMD^2": "MMD net of noise",
    "mean increase": "increase",
    "mean drop": "drop",
    "rate increase": "increase",
    "mean score increase": "flag rate increase",
}
"""The effect size reported for each kind of statistic."""
SCORE_CAP = 1e6
"""Where a reported score is cut: a statistic over a zero threshold is infinite, and
neither MLflow metrics nor Grafana can show that."""


@dataclass(frozen=True)
class EffectFloors:
    """The smallest effect size at which a significant check is worth an alarm, per kind.

    Defaults as in `MonitoringSpec` (min_ks_distance, min_total_variation, min_mmd);
    `per_check` overrides the kind's floor for one check by name.
    """

    ks_distance: float = 0.15
    total_variation: float = 0.15
    mmd: float = 0.07
    per_check: Mapping[str, float] = field(default_factory=dict)

    def of(self, name: str, kind: str, default: float = 0.0) -> float:
        """The floor of check `name` of `kind` (`default` for kinds without one here)."""
        if name in self.per_check:
            return float(self.per_check[name])
        by_kind = {"KS D": self.ks_distance, "chi-square": self.total_variation, "MMD^2": self.mmd}
        return float(by_kind.get(kind, default))


@dataclass(frozen=True)
class MeanShift:
    """A per-record score whose window mean matters in one direction: a check of its own.

    Calibrated by the same bootstrap and inside the same false-alarm budget as the drift
    checks (the unsupported-assertion rate, the label-free accuracy estimate).
    """

    reference: np.ndarray
    current: np.ndarray
    worse: Literal["higher", "lower"]
    floor: float
    """Smallest change of the mean, in the worse direction, that is material."""


@dataclass(frozen=True)
class CheckResult:
    """One check of a window: it alarms when it is significant *and* material.

    Significant: the statistic is beyond the threshold calibrated at the window's size (a
    window of the reference's own distribution crosses it rarely). Material: the effect
    size reaches its floor. Large windows make tiny, harmless differences significant;
    the floor keeps those from alarming.
    """

    name: str
    kind: str
    statistic: float
    threshold: float
    effect_size: float
    """The difference as a distance that does not grow with the window size, net of the
    value sampling noise alone gives at this size (see `EFFECT_SIZES`)."""
    floor: float
    n_reference: int
    n_current: int

    @property
    def significant(self) -> bool:
        return self.statistic > self.threshold

    @property
    def material(self) -> bool:
        return self.effect_size >= self.floor

    @property
    def drifted(self) -> bool:
        """Significant and material: the check alarms."""
        return self.significant and self.material

    @property
    def score(self) -> float:
        """The binding ratio, min(statistic / threshold, effect size / floor): above 1 alarms."""
        if self.statistic <= 0:
            return 0.0
        significance = self.statistic / self.threshold if self.threshold > 0 else float("inf")
        materiality = self.effect_size / self.floor if self.floor > 0 else float("inf")
        return min(significance, materiality)

    def reason(self) -> str:
        if self.drifted:
            verdict = "drift"
        else:
            verdict = "significant, not material" if self.significant else "no drift"
        return (
            f"{self.name}: {verdict} ({self.kind} {self.statistic:.4g} vs threshold "
            f"{self.threshold:.4g} calibrated at n={self.n_current}; "
            f"{EFFECT_SIZES[self.kind]} {self.effect_size:.3g} vs floor {self.floor:.3g})"
        )

    def to_dict(self) -> dict[str, object]:
        return asdict(self) | {
            "effect_size_kind": EFFECT_SIZES[self.kind],
            "significant": self.significant,
            "material": self.material,
            "alarm": self.drifted,
            "score": self.score,
        }


@dataclass(frozen=True)
class DriftResult:
    checks: list[CheckResult]
    false_alarm_rate: float

    @property
    def drifted(self) -> bool:
        """Any check significant and material."""
        return any(check.drifted for check in self.checks)

    @property
    def drifted_checks(self) -> list[str]:
        return [check.name for check in self.checks if check.drifted]

    @property
    def immaterial_checks(self) -> list[str]:
        """Significant checks whose effect is below its floor: no alarm."""
        return [c.name for c in self.checks if c.significant and not c.material]

    def check(self, name: str) -> CheckResult | None:
        return next((c for c in self.checks if c.name == name), None)

    def metrics(self) -> dict[str, float]:
        """Flat numbers for MLflow: per check the score (above 1 alarms) and effect size."""
        flat = {}
        for c in self.checks:
            flat[f"drift.{c.name}.score"] = float(min(c.score, SCORE_CAP))
            flat[f"drift.{c.name}.effect_size"] = c.effect_size
        return flat | {"drift.detected": float(self.drifted), "drift.checks": len(self.checks)}

    def to_dict(self) -> dict[str, object]:
        return {
            "drifted": self.drifted,
            "drifted_checks": self.drifted_checks,
            "significant_not_material": self.immaterial_checks,
            "false_alarm_rate": self.false_alarm_rate,
            "checks": [c.to_dict() for c in self.checks],
        }


class DriftDetector:
    """The reference side of every check, prepared once per reference profile.

    Args:
        reference: record frame of the version's reference (the test split).
        false_alarm_rate: wanted probability that a same-distribution window raises any
            alarm; split evenly over the checks that run.
        resamples: bootstrap resamples per calibration.
        max_vector_rows: the MMD checks use at most this many rows of each side.
        seed: seeds the calibration and the sampling, so verdicts are reproducible.
        floors: effect-size floors per kind of check, with per-check overrides.
    """

    def __init__(
        self,
        reference: pd.DataFrame,
        *,
        false_alarm_rate: float = 0.05,
        resamples: int = 2000,
        max_vector_rows: int = 2000,
        seed: int = 0,
        floors: EffectFloors | None = None,
    ) -> None:
        self.false_alarm_rate = false_alarm_rate
        self.resamples = resamples
        self.max_vector_rows = max_vector_rows
        self.seed = seed
        self.floors = floors or EffectFloors()
        unknown = sorted(set(self.floors.per_check) - set(ALL_CHECKS))
        if unknown:
            raise ValueError(
                f"monitoring.effect_size_floors names unknown check(s) {', '.join(unknown)}; "
                f"known: {', '.join(ALL_CHECKS)}"
            )
        self._numeric = {
            col: reference[col].to_numpy(dtype=float) for col in NUMERIC_CHECKS if col in reference
        }
        self._categorical = {
            col: reference[col].astype(str).to_numpy()
            for col in CATEGORICAL_CHECKS
            if col in reference
        }
        self._vectors: dict[str, RbfKernel] = {}
        if "embedding" in reference:
            self._vectors[EMBEDDING_CHECK] = RbfKernel(
                _stack(reference["embedding"]), seed, max_vector_rows
            )
        entropy_cols = [c for c in reference.columns if entropy_head(c)]
        if entropy_cols:
            values = reference[entropy_cols].to_numpy(dtype=float)
            sampled = values[~np.isnan(values).any(axis=1)]
            if len(sampled) >= 10:
                self._vectors[ATTENTION_CHECK] = RbfKernel(sampled, seed, max_vector_rows)
                self._entropy_cols = entropy_cols
        self._text = WordBag(reference["text"]) if "text" in reference else None

    def check_names(self, current: pd.DataFrame) -> list[str]:
        """The checks that run for `current`: those whose columns both sides have."""
        names = [c for c in (*self._numeric, *self._categorical) if c in current]
        if self._text is not None and "text" in current:
            names.append(TEXT_CHECK)
        if EMBEDDING_CHECK in self._vectors and "embedding" in current:
            names.append(EMBEDDING_CHECK)
        if ATTENTION_CHECK in self._vectors and set(self._entropy_cols) <= set(current.columns):
            names.append(ATTENTION_CHECK)
        return names

    def detect(
        self, current: pd.DataFrame, shifts: Mapping[str, MeanShift] | None = None
    ) -> DriftResult:
        """Run every applicable check on `current` with thresholds calibrated at its size.

        Args:
            current: the window's records.
            shifts: per-record scores judged with the drift checks, by check name (one of
                `SHIFT_CHECKS`); they share the false-alarm budget.
        """
        shifts = dict(shifts or {})
        odd = sorted(set(shifts) - set(SHIFT_CHECKS))
        if odd:
            raise ValueError(f"unknown mean-shift check(s) {odd}; known: {SHIFT_CHECKS}")
        names = self.check_names(current) + list(shifts)
        if not names:
            raise ValueError(
                "the window shares no monitored column with the reference "
                f"(window columns: {', '.join(map(str, current.columns)) or 'none'})"
            )
        quantile = 1.0 - self.false_alarm_rate / len(names)
        rng = np.random.default_rng(self.seed)
        weights = BootstrapCounts(self.resamples, rng)
        results = []
        for name in names:
            if name in shifts:
                found = _mean_shift(shifts[name], weights)
                floor = self.floors.of(name, found.kind, shifts[name].floor)
            else:
                found = self._run(name, current, weights, rng)
                floor = self.floors.of(name, found.kind)
            threshold = float(np.quantile(found.null, quantile))
            if found.kind == "KS D":
                # A column constant in the reference has a zero threshold: one record would
                # alarm. Demand at least the smallest difference both sample sizes can show.
                threshold = max(threshold, 1 / found.n_ref + 1 / max(found.n_cur, 1))
            results.append(
                CheckResult(
                    name,
                    found.kind,
                    float(found.statistic),
                    threshold,
                    max(float(found.effect), 0.0),
                    floor,
                    found.n_ref,
                    found.n_cur,
                )
            )
        return DriftResult(results, self.false_alarm_rate)

    def _run(self, name: str, current: pd.DataFrame, weights: BootstrapCounts, rng) -> _Measured:
        if name in self._numeric:
            ref = self._numeric[name]
            cur = current[name].to_numpy(dtype=float)
            cur = cur[~np.isnan(cur)]
            stat = stats.ks_2samp(ref, cur, method="asymp").statistic if len(cur) else 0.0
            null = ks_null(ref, len(cur), weights)
            return _Measured("KS D", stat, null, _net(stat, null), len(ref), len(cur))
        if name in self._categorical:
            ref = self._categorical[name]
            cats, ref_codes = np.unique(ref, return_inverse=True)
            cur = current[name].astype(str).to_numpy()
            cur_codes = np.searchsorted(cats, cur).clip(0, len(cats) - 1)
            cur_codes[cats[cur_codes] != cur] = len(cats)  # unseen categories: one cell
            onehot = sparse.csr_matrix(
                (np.ones(len(ref)), (np.arange(len(ref)), ref_codes)),
                shape=(len(ref), len(cats) + 1),
            )
            a = np.bincount(ref_codes, minlength=len(cats) + 1)[None]
            c = np.bincount(cur_codes, minlength=len(cats) + 1)[None]
            null, null_tv = chi2_null(onehot, len(cur), weights)
            effect = _net(total_variation(a, c)[0], null_tv)
            return _Measured("chi-square", chi2(a, c)[0], null, effect, len(ref), len(cur))
        if name == TEXT_CHECK:
            bag = self._text
            texts = current["text"].fillna("").astype(str)
            if len(texts) > bag.n:
                # Calibrated by bootstrap from the reference, the vocabulary test holds its
                # false-alarm rate for windows up to the reference's size, not far beyond.
                texts = texts.iloc[rng.choice(len(texts), bag.n, replace=False)]
            cur_counts = bag.count(texts)[None]
            null, null_tv = chi2_null(bag.docs, len(texts), weights)
            effect = _net(total_variation(bag.total[None], cur_counts)[0], null_tv)
            stat = chi2(bag.total[None], cur_counts)[0]
            return _Measured("chi-square", stat, null, effect, bag.n, len(texts))
        kernel = self._vectors[name]
        if name == EMBEDDING_CHECK:
            vectors = _stack(current["embedding"])
        else:
            values = current[self._entropy_cols].to_numpy(dtype=float)
            vectors = values[~np.isnan(values).any(axis=1)]
        if len(vectors) > self.max_vector_rows:
            vectors = vectors[rng.choice(len(vectors), self.max_vector_rows, replace=False)]
        stat = kernel.mmd(vectors) if len(vectors) >= 2 else 0.0
        null = kernel.null(len(vectors), weights)
        # The statistic is already a squared distance (MMD^2, unbiased).
        effect = np.sqrt(max(stat - null.mean(), 0.0))
        return _Measured("MMD^2", stat, null, effect, kernel.n, len(vectors))


@dataclass(frozen=True)
class _Measured:
    kind: str
    statistic: float
    null: np.ndarray
    effect: float
    n_ref: int
    n_cur: int


def _net(distance: float, null: np.ndarray) -> float:
    """The distance net of sampling noise: sqrt(observed^2 - mean null^2).

    Independent noise adds to a difference in quadrature, so the squared distance minus its
    mean under no drift estimates the squared distance between the populations.
    """
    return float(np.sqrt(max(distance**2 - float(np.mean(null**2)), 0.0)))


def _mean_shift(shift: MeanShift, weights: BootstrapCounts) -> _Measured:
    """Change of the window's mean in the worse direction, against bootstrap windows."""
    sign = 1.0 if shift.worse == "higher" else -1.0
    ref = sign * np.asarray(shift.reference, dtype=float)
    cur = sign * np.asarray(shift.current, dtype=float)
    stat = float(cur.mean() - ref.mean()) if len(cur) else 0.0
    null = mean_shift_null(ref, len(cur), weights)
    kind = "mean increase" if shift.worse == "higher" else "mean drop"
    return _Measured(kind, stat, null, stat - float(null.mean()), len(ref), len(cur))


def _stack(column: pd.Series) -> np.ndarray:
    return (
        np.stack([np.asarray(v, dtype=np.float64) for v in column])
        if len(column)
        else np.zeros((0, 1))
    )
