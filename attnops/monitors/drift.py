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
from collections import Counter
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy import sparse, stats

from attnops.models.records import TEXT_FEATURES

NUMERIC_CHECKS = (*TEXT_FEATURES, "confidence", "has_pii")
CATEGORICAL_CHECKS = ("prediction",)
TEXT_CHECK = "text_content"
EMBEDDING_CHECK = "embedding"
ATTENTION_CHECK = "attention_entropy"
_WORD = re.compile(r"[^\W\d_]+")  # letters of any script, no digits
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
        self._vectors: dict[str, _Kernel] = {}
        if "embedding" in reference:
            self._vectors[EMBEDDING_CHECK] = _Kernel(
                _stack(reference["embedding"]), seed, max_vector_rows
            )
        entropy_cols = [c for c in reference.columns if _ENTROPY_COLUMN.match(c)]
        if entropy_cols:
            values = reference[entropy_cols].to_numpy(dtype=float)
            sampled = values[~np.isnan(values).any(axis=1)]
            if len(sampled) >= 10:
                self._vectors[ATTENTION_CHECK] = _Kernel(sampled, seed, max_vector_rows)
                self._entropy_cols = entropy_cols
        self._text = _WordBag(reference["text"]) if "text" in reference else None

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
        weights = _Weights(self.resamples, rng)
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

    def _run(self, name: str, current: pd.DataFrame, weights: _Weights, rng):
        if name in self._numeric:
            ref = self._numeric[name]
            cur = current[name].to_numpy(dtype=float)
            cur = cur[~np.isnan(cur)]
            stat = stats.ks_2samp(ref, cur, method="asymp").statistic if len(cur) else 0.0
            return "KS D", stat, _ks_null(ref, len(cur), weights), len(ref), len(cur)
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
            stat = _chi2(
                np.bincount(ref_codes, minlength=len(cats) + 1)[None],
                np.bincount(cur_codes, minlength=len(cats) + 1)[None],
            )[0]
            return "chi-square", stat, _chi2_null(onehot, len(cur), weights), len(ref), len(cur)
        if name == TEXT_CHECK:
            bag = self._text
            texts = current["text"].fillna("").astype(str)
            if len(texts) > bag.n:
                # Calibrated by bootstrap from the reference, the vocabulary test holds its
                # false-alarm rate for windows up to the reference's size, not far beyond.
                texts = texts.iloc[rng.choice(len(texts), bag.n, replace=False)]
            cur_counts = bag.count(texts)
            stat = _chi2(bag.total[None], cur_counts[None])[0]
            return "chi-square", stat, _chi2_null(bag.docs, len(texts), weights), bag.n, len(texts)
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


class _Weights:
    """Bootstrap samples of size n from m rows, as counts per row (resamples x m).

    Drawn once per (m, n) and shared by the checks of one window: sampling dominates the
    cost of calibration otherwise.
    """

    def __init__(self, resamples: int, rng: np.random.Generator) -> None:
        self.resamples, self.rng, self._drawn = resamples, rng, {}

    def __call__(self, m: int, n: int, which: int) -> np.ndarray:
        key = (m, max(n, 1), which)
        if key not in self._drawn:
            counts = self.rng.multinomial(key[1], np.full(m, 1.0 / m), size=self.resamples)
            self._drawn[key] = counts.astype(np.float64)
        return self._drawn[key]


def _ks_null(ref: np.ndarray, n: int, weights: _Weights) -> np.ndarray:
    """KS D between two bootstrap samples of the reference, sizes len(ref) and n."""
    order = np.argsort(ref, kind="stable")
    _, starts = np.unique(ref[order], return_index=True)
    m = len(ref)

    def ecdf(counts: np.ndarray) -> np.ndarray:
        per_value = np.add.reduceat(counts[:, order], starts, axis=1)
        return np.cumsum(per_value, axis=1) / counts.sum(axis=1, keepdims=True)

    return np.abs(ecdf(weights(m, m, 0)) - ecdf(weights(m, n, 1))).max(axis=1)


def _chi2(a: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Two-sample chi-square of count rows a and c (b x cells), empty cells skipped."""
    na, nc = a.sum(axis=1, keepdims=True), c.sum(axis=1, keepdims=True)
    pooled = (a + c) / (na + nc)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = (a / na - c / nc) ** 2 / pooled
    return np.nansum(terms, axis=1) * (na * nc / (na + nc))[:, 0]


def _chi2_null(rows: sparse.csr_matrix, n: int, weights: _Weights) -> np.ndarray:
    """Chi-square between bootstrap samples of the reference rows (each row: cell counts)."""
    m = rows.shape[0]
    a = np.asarray(rows.T @ weights(m, m, 0).T).T
    c = np.asarray(rows.T @ weights(m, n, 1).T).T
    return _chi2(a, c)


class _WordBag:
    """Word counts per reference text over the reference vocabulary plus one unseen cell.

    Words seen in only one reference text count as unseen too: by Good-Turing, the share of
    such words estimates how often new words appear in same-distribution text, so bootstrap
    windows of the reference carry about the right amount of "unseen" words.
    """

    def __init__(self, texts: pd.Series, max_vocabulary: int = 5000) -> None:
        tokenised = [_WORD.findall(t.lower()) for t in texts.fillna("").astype(str)]
        doc_freq = Counter(w for words in tokenised for w in set(words))
        common = [w for w, k in doc_freq.most_common(max_vocabulary) if k >= 2]
        self.index = {w: i for i, w in enumerate(common)}
        self.docs = self._matrix(tokenised)
        self.total = np.asarray(self.docs.sum(axis=0)).ravel()
        self.n = len(tokenised)

    def _matrix(self, tokenised: list[list[str]]) -> sparse.csr_matrix:
        unseen = len(self.index)
        rows, cols = [], []
        for row, words in enumerate(tokenised):
            cols += [self.index.get(w, unseen) for w in words]
            rows += [row] * len(words)
        return sparse.csr_matrix(
            (np.ones(len(cols)), (rows, cols)), shape=(len(tokenised), unseen + 1)
        )

    def count(self, texts: pd.Series) -> np.ndarray:
        """Word counts of all `texts` together over the vocabulary cells."""
        counts = np.zeros(len(self.index) + 1)
        unseen = len(self.index)
        for word, k in Counter(_WORD.findall("\n".join(texts).lower())).items():
            counts[self.index.get(word, unseen)] += k
        return counts


class _Kernel:
    """RBF kernel MMD against the reference, bandwidth = median reference distance."""

    def __init__(self, reference: np.ndarray, seed: int, max_rows: int) -> None:
        if len(reference) > max_rows:
            rng = np.random.default_rng(seed)
            reference = reference[rng.choice(len(reference), max_rows, replace=False)]
        self.reference = reference
        self.n = len(reference)
        d2 = _sq_dist(reference, reference)
        self.gamma = 1.0 / max(float(np.median(d2[np.triu_indices(self.n, 1)])), 1e-12)
        self.k_ref = np.exp(-self.gamma * d2)

    def mmd(self, current: np.ndarray) -> float:
        """Unbiased squared MMD between the reference and `current`."""
        k_cc = np.exp(-self.gamma * _sq_dist(current, current))
        k_rc = np.exp(-self.gamma * _sq_dist(self.reference, current))
        m, n = self.n, len(current)
        xx = (self.k_ref.sum() - m) / (m * (m - 1))
        yy = (k_cc.sum() - n) / (n * (n - 1))
        return float(xx + yy - 2 * k_rc.mean())

    def null(self, n: int, weights: _Weights) -> np.ndarray:
        """Unbiased MMD^2 between bootstrap samples of sizes m and n, as weighted sums.

        Pairs of draws of the same reference row count with k = 1 in all three terms, so
        their effect cancels in expectation.
        """
        m = self.n
        n = max(n, 2)
        a, c = weights(m, m, 0), weights(m, n, 1)
        ka, kc = a @ self.k_ref, c @ self.k_ref
        xx = ((ka * a).sum(1) - m) / (m * (m - 1))
        yy = ((kc * c).sum(1) - n) / (n * (n - 1))
        xy = (ka * c).sum(1) / (m * n)
        return xx + yy - 2 * xy


def _sq_dist(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    d2 = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2 * x @ y.T
    return np.maximum(d2, 0.0)
