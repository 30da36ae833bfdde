"""Two-sample statistics of the drift checks, with their null distributions.

Each null is the statistic between two bootstrap samples of the reference (sizes: the
reference's and the window's), computed for all resamples at once from per-row draw counts
(`BootstrapCounts`), so calibrating a check costs the same for any window size.
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pandas as pd
from scipy import sparse

WORD = re.compile(r"[^\W\d_]+")  # letters of any script, no digits


class BootstrapCounts:
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


def ks_null(ref: np.ndarray, n: int, weights: BootstrapCounts) -> np.ndarray:
    """KS D between two bootstrap samples of the reference, sizes len(ref) and n."""
    order = np.argsort(ref, kind="stable")
    _, starts = np.unique(ref[order], return_index=True)
    m = len(ref)

    def ecdf(counts: np.ndarray) -> np.ndarray:
        per_value = np.add.reduceat(counts[:, order], starts, axis=1)
        return np.cumsum(per_value, axis=1) / counts.sum(axis=1, keepdims=True)

    return np.abs(ecdf(weights(m, m, 0)) - ecdf(weights(m, n, 1))).max(axis=1)


def chi2(a: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Two-sample chi-square of count rows a and c (b x cells), empty cells skipped."""
    na, nc = a.sum(axis=1, keepdims=True), c.sum(axis=1, keepdims=True)
    pooled = (a + c) / (na + nc)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = (a / na - c / nc) ** 2 / pooled
    return np.nansum(terms, axis=1) * (na * nc / (na + nc))[:, 0]


def total_variation(a: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Total variation distance between the frequencies of count rows a and c (b x cells).

    The share of one side's mass that would have to move to match the other, in [0, 1].
    """
    pa = a / np.maximum(a.sum(axis=1, keepdims=True), 1)
    pc = c / np.maximum(c.sum(axis=1, keepdims=True), 1)
    return 0.5 * np.abs(pa - pc).sum(axis=1)


def chi2_null(
    rows: sparse.csr_matrix, n: int, weights: BootstrapCounts
) -> tuple[np.ndarray, np.ndarray]:
    """Chi-square and total variation between bootstrap samples of the reference rows.

    Each row of `rows` holds one reference record's cell counts.
    """
    m = rows.shape[0]
    a = np.asarray(rows.T @ weights(m, m, 0).T).T
    c = np.asarray(rows.T @ weights(m, n, 1).T).T
    return chi2(a, c), total_variation(a, c)


def mean_shift_null(values: np.ndarray, n: int, weights: BootstrapCounts) -> np.ndarray:
    """Window mean minus reference mean of a per-record score, both bootstrap samples."""
    m = len(values)
    return weights(m, max(n, 1), 1) @ values / max(n, 1) - weights(m, m, 0) @ values / m


class WordBag:
    """Word counts per reference text over the reference vocabulary plus one unseen cell.

    Words seen in only one reference text count as unseen too: by Good-Turing, the share of
    such words estimates how often new words appear in same-distribution text, so bootstrap
    windows of the reference carry about the right amount of "unseen" words.
    """

    def __init__(self, texts: pd.Series, max_vocabulary: int = 5000) -> None:
        tokenised = [WORD.findall(t.lower()) for t in texts.fillna("").astype(str)]
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
        for word, k in Counter(WORD.findall("\n".join(texts).lower())).items():
            counts[self.index.get(word, unseen)] += k
        return counts


class RbfKernel:
    """RBF kernel MMD against the reference, bandwidth = median reference distance."""

    def __init__(self, reference: np.ndarray, seed: int, max_rows: int) -> None:
        if len(reference) > max_rows:
            rng = np.random.default_rng(seed)
            reference = reference[rng.choice(len(reference), max_rows, replace=False)]
        self.reference = reference
        self.n = len(reference)
        d2 = sq_dist(reference, reference)
        self.gamma = 1.0 / max(float(np.median(d2[np.triu_indices(self.n, 1)])), 1e-12)
        self.k_ref = np.exp(-self.gamma * d2)

    def mmd(self, current: np.ndarray) -> float:
        """Unbiased squared MMD between the reference and `current`."""
        k_cc = np.exp(-self.gamma * sq_dist(current, current))
        k_rc = np.exp(-self.gamma * sq_dist(self.reference, current))
        m, n = self.n, len(current)
        xx = (self.k_ref.sum() - m) / (m * (m - 1))
        yy = (k_cc.sum() - n) / (n * (n - 1))
        return float(xx + yy - 2 * k_rc.mean())

    def null(self, n: int, weights: BootstrapCounts) -> np.ndarray:
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


def sq_dist(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    d2 = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2 * x @ y.T
    return np.maximum(d2, 0.0)
