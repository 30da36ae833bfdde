"""Label-free performance estimate for a window: confidence-based performance estimation.

Labels for live traffic arrive late or never. If the model's confidence is calibrated, a
prediction with confidence p is right with probability p, so a window's expected accuracy
is the mean calibrated confidence (the idea behind NannyML's CBPE). The temperature fitted
at training time calibrates on average; an isotonic map from confidence to correctness,
fitted on the labelled reference (the test split, in and out of scope), corrects what is
left. The estimate holds under covariate shift (new kinds of input, as long as confidence
still means what it meant) and not under concept shift (the same input now deserves another
label), which only labels reveal.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.isotonic import IsotonicRegression


@dataclass(frozen=True)
class PerformanceEstimate:
    accuracy: float
    """Estimated share of correct predictions in the window."""
    accuracy_low: float
    accuracy_high: float
    """Bounds of the estimate: the window's sampling spread and the map's own uncertainty
    (from refitting it on bootstrap resamples of the reference), combined."""
    n: int

    def metrics(self, prefix: str = "estimated_") -> dict[str, float]:
        return {
            f"{prefix}accuracy": self.accuracy,
            f"{prefix}accuracy_low": self.accuracy_low,
            f"{prefix}accuracy_high": self.accuracy_high,
        }


class PerformanceEstimator:
    """Fit on labelled reference records; estimate accuracy on unlabelled windows.

    Args:
        reference: records with `label`, `prediction` and `confidence`; a label the model
            cannot predict (out of scope) counts as a wrong prediction, as it is live.
        z: width of the bounds in standard errors (1.96 for about 95%).
    """

    def __init__(
        self, reference: pd.DataFrame, *, z: float = 1.96, resamples: int = 100, seed: int = 0
    ) -> None:
        for column in ("label", "prediction", "confidence"):
            if column not in reference:
                raise ValueError(f"reference records lack the '{column}' column")
        correct = (reference["label"] == reference["prediction"]).to_numpy(dtype=float)
        confidence = reference["confidence"].to_numpy(dtype=float)
        self._map = _fit(confidence, correct)
        rng = np.random.default_rng(seed)
        draws = rng.integers(0, len(correct), size=(resamples, len(correct)))
        self._bootstrap_maps = [_fit(confidence[rows], correct[rows]) for rows in draws]
        self.z = z

    def correct_probability(self, confidence: np.ndarray) -> np.ndarray:
        """Per prediction, the probability that it is right (the calibrated confidence).

        On the reference itself their mean is its actual accuracy: an isotonic fit keeps
        the mean of what it fits.
        """
        return self._map.predict(np.asarray(confidence, dtype=float))

    def estimate(self, confidence: np.ndarray) -> PerformanceEstimate:
        """Estimated accuracy of a window from its predictions' confidence."""
        confidence = np.asarray(confidence, dtype=float)
        if len(confidence) == 0:
            raise ValueError("cannot estimate performance on an empty window")
        p = self.correct_probability(confidence)
        accuracy = float(p.mean())
        sampling_var = float((p * (1 - p)).sum()) / len(p) ** 2
        fit_var = float(np.var([m.predict(confidence).mean() for m in self._bootstrap_maps]))
        margin = self.z * np.sqrt(sampling_var + fit_var)
        return PerformanceEstimate(
            accuracy=accuracy,
            accuracy_low=max(0.0, accuracy - margin),
            accuracy_high=min(1.0, accuracy + margin),
            n=len(p),
        )


def _fit(confidence: np.ndarray, correct: np.ndarray) -> IsotonicRegression:
    mapping = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip")
    return mapping.fit(confidence, correct)
