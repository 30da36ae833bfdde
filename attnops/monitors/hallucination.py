"""Unsupported assertions: the classifier's hallucination.

A classifier cannot invent text, but it can assert: give an in-scope label, confidently,
to an input that supports none. Confidence alone misses the worst cases (a model can be
sure about nonsense), so an assertion is unsupported when the model is confident (at or
above the out-of-scope threshold chosen on validation) *and* the input is far from every
in-scope reference input in the model's own embedding space (farther than all but a
`distance_quantile` share of in-scope reference inputs are from their nearest neighbour).

Generated text (seq2seq) has its own check, `attnops.monitors.groundedness`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats


@dataclass(frozen=True)
class UnsupportedAssertions:
    rate: float
    """Share of the window's inputs that are confident and far from the reference."""
    n_flagged: int
    n: int
    reference_rate: float
    """The same share on the reference (in-scope inputs leave-one-out)."""
    alarm_rate: float
    """The rate above which a window of this size is unlikely (p < alpha) to come from the
    reference's distribution, given that the reference rate is itself estimated."""

    @property
    def alarm(self) -> bool:
        return self.rate > self.alarm_rate

    def metrics(self, prefix: str = "") -> dict[str, float]:
        return {
            f"{prefix}unsupported_assertion_rate": self.rate,
            f"{prefix}unsupported_assertion_alarm_rate": self.alarm_rate,
            f"{prefix}unsupported_assertion_reference_rate": self.reference_rate,
        }


class UnsupportedAssertionDetector:
    """Flags confident predictions on inputs far from the in-scope reference.

    Args:
        reference: records with `embedding`, `confidence` and `label`.
        out_of_scope_threshold: confidence at or above which the model asserts a label.
        out_of_scope_label: the reference label of inputs no class covers; excluded from
            the in-scope neighbourhood.
        distance_quantile: share of in-scope reference inputs considered "near".
        alpha: false-alarm rate of the window alarm.
    """

    def __init__(
        self,
        reference: pd.DataFrame,
        *,
        out_of_scope_threshold: float,
        out_of_scope_label: str | None,
        distance_quantile: float = 0.95,
        alpha: float = 0.01,
    ) -> None:
        for column in ("embedding", "confidence", "label"):
            if column not in reference:
                raise ValueError(f"reference records lack the '{column}' column")
        in_scope = (reference["label"] != out_of_scope_label).to_numpy()
        vectors = np.stack(reference["embedding"].to_numpy()).astype(np.float32)
        self.anchors = vectors[in_scope]
        if len(self.anchors) < 10:
            raise ValueError(f"need >= 10 in-scope reference records, got {len(self.anchors)}")
        self.confidence_threshold = out_of_scope_threshold
        self.alpha = alpha
        own = _nearest_distance(self.anchors, self.anchors, exclude_self=True)
        self.distance_threshold = float(np.quantile(own, distance_quantile))
        # The normal rate counts the whole reference, out-of-scope inputs included, as
        # live traffic has them; in-scope inputs leave themselves out of the neighbourhood.
        distance = np.empty(len(vectors), dtype=np.float32)
        distance[in_scope] = own
        distance[~in_scope] = _nearest_distance(vectors[~in_scope], self.anchors)
        confident = reference["confidence"].to_numpy() >= out_of_scope_threshold
        self.reference_rate = float((confident & (distance > self.distance_threshold)).mean())
        self.reference_n = len(vectors)

    def flags(self, records: pd.DataFrame) -> np.ndarray:
        """True for each record that asserts a label the reference does not support."""
        if len(records) == 0:
            return np.zeros(0, dtype=bool)
        vectors = np.stack(records["embedding"].to_numpy()).astype(np.float32)
        far = _nearest_distance(vectors, self.anchors) > self.distance_threshold
        return far & (records["confidence"].to_numpy() >= self.confidence_threshold)

    def assess(self, records: pd.DataFrame) -> UnsupportedAssertions:
        """The window's unsupported-assertion rate and whether it is above normal."""
        flags = self.flags(records)
        n = len(flags)
        # Two-sample bound: the reference rate is itself an estimate from a few hundred
        # inputs, which matters more than the window's own noise once windows are large.
        p = max(self.reference_rate, 1.0 / (self.reference_n + 1))
        spread = np.sqrt(p * (1 - p) * (1 / max(n, 1) + 1 / self.reference_n))
        alarm_rate = p + float(stats.norm.ppf(1 - self.alpha)) * spread
        return UnsupportedAssertions(
            rate=float(flags.mean()) if n else 0.0,
            n_flagged=int(flags.sum()),
            n=n,
            reference_rate=self.reference_rate,
            alarm_rate=alarm_rate,
        )


def _nearest_distance(
    queries: np.ndarray, anchors: np.ndarray, *, exclude_self: bool = False, chunk: int = 4096
) -> np.ndarray:
    """Euclidean distance from each query to its nearest anchor, in bounded-memory chunks."""
    anchor_sq = (anchors * anchors).sum(1)
    out = np.empty(len(queries), dtype=np.float32)
    for start in range(0, len(queries), chunk):
        q = queries[start : start + chunk]
        d2 = (q * q).sum(1)[:, None] + anchor_sq[None, :] - 2 * q @ anchors.T
        if exclude_self:
            rows = np.arange(len(q))
            d2[rows, start + rows] = np.inf
        out[start : start + chunk] = np.sqrt(np.maximum(d2.min(axis=1), 0))
    return out
