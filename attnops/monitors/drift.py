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
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy import sparse, stats

from attnops.models.records import TEXT_FEATURES
from attnops.monitors.two_sample import (
    BootstrapCounts,
    RbfKernel,
    WordBag,
    chi2,
    chi2_null,
    ks_null,
)

NUMERIC_CHECKS = (*TEXT_FEATURES, "confidence", "has_pii")
CATEGORICAL_CHECKS = ("prediction",)
TEXT_CHECK = "text_content"
EMBEDDING_CHECK = "embedding"
ATTENTION_CHECK = "attention_entropy"
_ENTROPY_COLUMN = re.compile(r"^l\d+h\d+$")


@dataclass(frozen=True)
class CheckResult:
    name: str
    kind: str
    statistic: float
    threshold: float
    drifted: bool
    n_reference: int
    n_current: int

    @property
    def score(self) -> float:
        """The statistic in units of its threshold: above 1 is drift."""
        if self.statistic <= 0:
            return 0.0
        return self.statistic / self.threshold if self.threshold > 0 else float("inf")

    def reason(self) -> str:
        verdict = "drift" if self.drifted else "no drift"
        return (
            f"{self.name}: {verdict} ({self.kind} {self.statistic:.4g} vs threshold "
            f"{self.threshold:.4g} calibrated at n={self.n_current})"
        )


@dataclass(frozen=True)
class DriftResult:
    checks: list[CheckResult]
    false_alarm_rate: float

    @property
    def drifted(self) -> bool:
        return any(check.drifted for check in self.checks)

    @property
    def drifted_checks(self) -> list[str]:
        return [check.name for check in self.checks if check.drifted]

    def metrics(self) -> dict[str, float]:
        """Flat numbers for MLflow: drift.<check>.score (statistic / threshold) and the verdict."""
        flat = {f"drift.{c.name}.score": float(min(c.score, 1e6)) for c in self.checks}
        return flat | {"drift.detected": float(self.drifted), "drift.checks": len(self.checks)}

    def to_dict(self) -> dict[str, object]:
        return {
            "drifted": self.drifted,
            "drifted_checks": self.drifted_checks,
            "false_alarm_rate": self.false_alarm_rate,
            "checks": [asdict(c) | {"score": c.score} for c in self.checks],
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
    """

    def __init__(
        self,
        reference: pd.DataFrame,
        *,
        false_alarm_rate: float = 0.05,
        resamples: int = 2000,
        max_vector_rows: int = 2000,
        seed: int = 0,
    ) -> None:
        self.false_alarm_rate = false_alarm_rate
        self.resamples = resamples
        self.max_vector_rows = max_vector_rows
        self.seed = seed
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
        entropy_cols = [c for c in reference.columns if _ENTROPY_COLUMN.match(c)]
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

    def detect(self, current: pd.DataFrame) -> DriftResult:
        """Run every applicable check on `current` with thresholds calibrated at its size."""
        names = self.check_names(current)
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
            kind, statistic, null, n_ref, n_cur = self._run(name, current, weights, rng)
            threshold = float(np.quantile(null, quantile))
            statistic = float(statistic)
            if kind == "KS D":
                # A column constant in the reference has a zero threshold: one record would
                # alarm. Demand at least the smallest difference both sample sizes can show.
                threshold = max(threshold, 1 / n_ref + 1 / max(n_cur, 1))
            results.append(
                CheckResult(name, kind, statistic, threshold, statistic > threshold, n_ref, n_cur)
            )
        return DriftResult(results, self.false_alarm_rate)

    def _run(self, name: str, current: pd.DataFrame, weights: BootstrapCounts, rng):
        if name in self._numeric:
            ref = self._numeric[name]
            cur = current[name].to_numpy(dtype=float)
            cur = cur[~np.isnan(cur)]
            stat = stats.ks_2samp(ref, cur, method="asymp").statistic if len(cur) else 0.0
            return "KS D", stat, ks_null(ref, len(cur), weights), len(ref), len(cur)
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
            stat = chi2(
                np.bincount(ref_codes, minlength=len(cats) + 1)[None],
                np.bincount(cur_codes, minlength=len(cats) + 1)[None],
            )[0]
            return "chi-square", stat, chi2_null(onehot, len(cur), weights), len(ref), len(cur)
        if name == TEXT_CHECK:
            bag = self._text
            texts = current["text"].fillna("").astype(str)
            if len(texts) > bag.n:
                # Calibrated by bootstrap from the reference, the vocabulary test holds its
                # false-alarm rate for windows up to the reference's size, not far beyond.
                texts = texts.iloc[rng.choice(len(texts), bag.n, replace=False)]
            cur_counts = bag.count(texts)
            stat = chi2(bag.total[None], cur_counts[None])[0]
            return "chi-square", stat, chi2_null(bag.docs, len(texts), weights), bag.n, len(texts)
        kernel = self._vectors[name]
        if name == EMBEDDING_CHECK:
            vectors = _stack(current["embedding"])
        else:
            values = current[self._entropy_cols].to_numpy(dtype=float)
            vectors = values[~np.isnan(values).any(axis=1)]
        if len(vectors) > self.max_vector_rows:
            vectors = vectors[rng.choice(len(vectors), self.max_vector_rows, replace=False)]
        stat = kernel.mmd(vectors) if len(vectors) >= 2 else 0.0
        return "MMD^2", stat, kernel.null(len(vectors), weights), kernel.n, len(vectors)


def _stack(column: pd.Series) -> np.ndarray:
    return (
        np.stack([np.asarray(v, dtype=np.float64) for v in column])
        if len(column)
        else np.zeros((0, 1))
    )
