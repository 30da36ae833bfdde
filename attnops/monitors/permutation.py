"""Two-sample drift checks calibrated by permutation: exact for a reference of tens of rows.

A generative version's reference profile holds few outputs (evaluation decodes tens of
test inputs on a CPU). Bootstrapping such a reference, as the classification monitor does
(`two_sample`), understates how different a fresh sample looks: resamples repeat the same
few rows, so they hold fewer distinct lengths and fewer new words than live traffic, and
same-distribution windows crossed the thresholds in 8% of windows against a 5% budget
(32 reference rows, windows of 50). Under no drift every split of the pooled reference and
window rows into the two sizes is equally likely, so the statistic over random splits is
its exact null at any size. Word vocabularies are built from the pooled texts, which a
split does not change.

The statistics and effect sizes are classification's: KS D for numbers, chi-square of word
counts with the total variation distance as effect, each effect net of the null's noise;
and the increase of a per-row score's mean (the hallucination detector's).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from attnops.monitors.drift import CheckResult
from attnops.monitors.two_sample import WordBag, chi2, total_variation


class Splits:
    """Random splits of m reference + n window rows (window rows last in the pooled order);
    row 0 of each matrix is the observed split."""

    def __init__(self, m: int, n: int, resamples: int, rng: np.random.Generator) -> None:
        self.m, self.n = m, n
        ranks = np.argsort(rng.random((resamples, m + n)), axis=1)
        window = np.zeros((resamples + 1, m + n))
        np.put_along_axis(window[1:], ranks[:, :n], 1.0, axis=1)
        window[0, m:] = 1.0
        self.window = window
        self.reference = 1.0 - window


class Permutations:
    """`Splits` per (m, n), drawn once and shared by the checks of one window."""

    def __init__(self, resamples: int, rng: np.random.Generator) -> None:
        self.resamples, self.rng, self._drawn = resamples, rng, {}

    def __call__(self, m: int, n: int) -> Splits:
        if (m, n) not in self._drawn:
            self._drawn[m, n] = Splits(m, n, self.resamples, self.rng)
        return self._drawn[m, n]


def ks_check(
    name: str, reference: np.ndarray, current: np.ndarray, splits: Splits, *, alpha: float,
    floor: float,
) -> CheckResult:  # fmt: skip
    """KS D between `reference` and `current` (both without missing values, the sizes of
    `splits`), with its permutation threshold and effect net of noise."""
    pooled = np.concatenate([reference, current])
    order = np.argsort(pooled, kind="stable")
    _, starts = np.unique(pooled[order], return_index=True)

    def ecdf(weights: np.ndarray) -> np.ndarray:
        per_value = np.add.reduceat(weights[:, order], starts, axis=1)
        return np.cumsum(per_value, axis=1) / weights.sum(axis=1, keepdims=True)

    d = np.abs(ecdf(splits.reference) - ecdf(splits.window)).max(axis=1)
    return _judged(name, "KS D", d, d, splits, alpha=alpha, floor=floor)


def words_check(
    name: str, reference: pd.Series, current: pd.Series, splits: Splits, *, alpha: float,
    floor: float,
) -> CheckResult:  # fmt: skip
    """Chi-square of the words of two sets of texts, the total variation of their word
    frequencies as effect (words in fewer than two texts pooled into one unseen cell)."""
    texts = pd.concat([reference, current], ignore_index=True).fillna("").astype(str)
    docs = WordBag(texts).docs
    a = np.asarray((docs.T @ splits.reference.T).T)
    c = np.asarray((docs.T @ splits.window.T).T)
    with np.errstate(invalid="ignore", divide="ignore"):
        stat = np.nan_to_num(chi2(a, c))  # texts without a word: nothing to compare
    return _judged(name, "chi-square", stat, total_variation(a, c), splits,
                   alpha=alpha, floor=floor)  # fmt: skip


def mean_increase(reference: np.ndarray, current: np.ndarray, splits: Splits) -> np.ndarray:
    """Window mean minus reference mean of a per-row score: the observed split first, then
    one value per permutation."""
    pooled = np.concatenate([reference, current])
    return splits.window @ pooled / splits.n - splits.reference @ pooled / splits.m


def _judged(
    name: str, kind: str, stat: np.ndarray, distance: np.ndarray, splits: Splits, *,
    alpha: float, floor: float,
) -> CheckResult:  # fmt: skip
    """The check from the observed split (row 0) and the null (the others): threshold at
    the null's 1 - alpha quantile; effect = sqrt(observed^2 - mean null^2), as noise adds
    to a difference in quadrature."""
    noise = float(np.mean(distance[1:] ** 2))
    return CheckResult(
        name=name,
        kind=kind,
        statistic=float(stat[0]),
        threshold=float(np.quantile(stat[1:], 1.0 - alpha)),
        effect_size=float(np.sqrt(max(distance[0] ** 2 - noise, 0.0))),
        floor=floor,
        n_reference=splits.m,
        n_current=splits.n,
    )
