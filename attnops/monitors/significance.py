"""Is a candidate really better or worse than the champion, or only different by noise?

Both models are scored on the same test inputs, so their errors are paired: resampling
inputs (not models) keeps that pairing and gives a much tighter interval on the
difference than comparing two independent scores. Macro-F1 is not a mean over inputs,
so its interval comes from a paired bootstrap; accuracy additionally gets McNemar's
exact test on the discordant pairs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.stats import binomtest

Verdict = Literal["better", "worse", "no_difference"]


@dataclass(frozen=True)
class PairedComparison:
    """Candidate minus champion on one test set."""

    candidate_macro_f1: float
    champion_macro_f1: float
    difference: float
    ci_low: float
    ci_high: float
    confidence: float
    verdict: Verdict
    """'better'/'worse' only when the whole interval lies on that side of zero and
    McNemar's test is significant at the same level."""
    non_inferior: bool
    """The interval's lower end is above -margin: not worse by more than the margin."""
    margin: float
    mcnemar_p_value: float
    """Exact McNemar test of equal accuracy (1.0 when no input is decided differently)."""
    n: int

    def reason(self) -> str:
        return (
            f"macro-F1 {self.candidate_macro_f1:.4f} vs champion {self.champion_macro_f1:.4f}: "
            f"difference {self.difference:+.4f}, {self.confidence:.0%} paired-bootstrap CI "
            f"[{self.ci_low:+.4f}, {self.ci_high:+.4f}] on {self.n} inputs "
            f"(non-inferiority margin {self.margin}), McNemar p={self.mcnemar_p_value:.3g}"
        )


def compare_paired(
    y_true: np.ndarray,
    candidate: np.ndarray,
    champion: np.ndarray,
    *,
    n_classes: int,
    margin: float = 0.01,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> PairedComparison:
    """Paired bootstrap CI of the macro-F1 difference, plus McNemar on correctness.

    Args:
        y_true, candidate, champion: class indices for the same inputs, in the same order.
        n_classes: classes to average over (absent classes count as F1 0, as in
            `sklearn.metrics.f1_score(labels=range(n_classes), zero_division=0)`).
        margin: how much worse (in macro-F1) still counts as non-inferior.
        confidence: width of the two-sided interval.
        n_resamples: bootstrap resamples; the same resamples score both models.
        seed: makes the interval reproducible.
    """
    y_true, candidate, champion = (
        np.asarray(a, dtype=np.int64) for a in (y_true, candidate, champion)
    )
    n = len(y_true)
    if not n or len(candidate) != n or len(champion) != n:
        raise ValueError(
            f"need the same non-empty test inputs for both models (got {n}, {len(candidate)}, "
            f"{len(champion)} predictions)"
        )
    rng = np.random.default_rng(seed)
    # Each row counts how often each input is drawn: one resample, applied to both models.
    weights = rng.multinomial(n, np.full(n, 1.0 / n), size=n_resamples).astype(np.float64)
    ones = np.ones((1, n))
    cand = _macro_f1(ones, y_true, candidate, n_classes)[0]
    champ = _macro_f1(ones, y_true, champion, n_classes)[0]
    diffs = _macro_f1(weights, y_true, candidate, n_classes) - _macro_f1(
        weights, y_true, champion, n_classes
    )
    alpha = 1.0 - confidence
    low, high = np.quantile(diffs, [alpha / 2, 1 - alpha / 2])
    # Percentile intervals are unreliable when only a handful of inputs are decided
    # differently (a single one-sided pair pushes the whole interval off zero), so a
    # verdict also needs McNemar's exact test on those inputs to agree.
    p_value = mcnemar_exact(y_true, candidate, champion)
    significant = p_value < alpha
    verdict: Verdict = (
        "better" if low > 0 and significant else "worse" if high < 0 and significant
        else "no_difference"
    )  # fmt: skip
    return PairedComparison(
        candidate_macro_f1=float(cand),
        champion_macro_f1=float(champ),
        difference=float(cand - champ),
        ci_low=float(low),
        ci_high=float(high),
        confidence=confidence,
        verdict=verdict,
        non_inferior=bool(low >= -margin),
        margin=margin,
        mcnemar_p_value=p_value,
        n=n,
    )


def mcnemar_exact(y_true: np.ndarray, candidate: np.ndarray, champion: np.ndarray) -> float:
    """Two-sided exact McNemar p-value: are the discordant pairs split evenly?"""
    cand_right, champ_right = candidate == y_true, champion == y_true
    only_candidate = int((cand_right & ~champ_right).sum())
    only_champion = int((~cand_right & champ_right).sum())
    discordant = only_candidate + only_champion
    if discordant == 0:
        return 1.0
    return float(binomtest(only_candidate, discordant, 0.5).pvalue)


def _macro_f1(
    weights: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray, n_classes: int
) -> np.ndarray:
    """Macro-F1 for each row of input weights (resample counts), vectorised over rows."""
    true_hot = np.eye(n_classes)[y_true]
    pred_hot = np.eye(n_classes)[y_pred]
    tp = weights @ (true_hot * pred_hot)
    fp = weights @ pred_hot - tp
    fn = weights @ true_hot - tp
    denominator = 2 * tp + fp + fn
    f1 = np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)
    return f1.mean(axis=1)
