"""Unsupported assertions: the classifier's hallucination.

A classifier cannot invent text, but it can assert: give an in-scope label to an input
that supports none. The served answer always carries a label, so an answer is an
unsupported assertion when the version's out-of-scope score (`attnops.models.ood`, chosen
on validation and stored with the version) puts its input beyond the threshold that
rejects only the spec's share of in-scope inputs. Records carry the score
(`out_of_scope_score`); records read back from the inference log carry the server's
verdict (`unsupported`), made with the same stored score.

Versions registered before out-of-scope scores were stored have only a confidence
threshold: for them an assertion is unsupported when the model is confident (at or above
that threshold) *and* the input is far from every in-scope reference input in the
model's own embedding space (farther than all but a `distance_quantile` share of
in-scope reference inputs are from their nearest neighbour).

Generated text (seq2seq) has its own check, `attnops.models.groundedness`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from attnops.models.ood import OUT_OF_SCOPE_SCORE


@dataclass(frozen=True)
class UnsupportedAssertions:
    rate: float
    """Share of the window's answers that are unsupported assertions."""
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
    """Flags answers whose input supports none of the version's classes.

    Args:
        reference: the version's reference records (`label` and, per the version,
            `out_of_scope_score` or `embedding` and `confidence`).
        out_of_scope: the reference summary's `out_of_scope` section (the chosen score and
            its threshold); None for versions that predate it, which then need
            `out_of_scope_threshold`.
        out_of_scope_threshold: confidence at or above which the model asserts a label
            (versions without an `out_of_scope` section only).
        out_of_scope_label: the reference label of inputs no class covers; excluded from
            the in-scope neighbourhood.
        distance_quantile: share of in-scope reference inputs considered "near" (versions
            without an `out_of_scope` section only).
        alpha: false-alarm rate of the window alarm.
    """

    def __init__(
        self,
        reference: pd.DataFrame,
        *,
        out_of_scope: dict[str, object] | None = None,
        out_of_scope_threshold: float | None = None,
        out_of_scope_label: str | None,
        distance_quantile: float = 0.95,
        alpha: float = 0.01,
    ) -> None:
        self.alpha = alpha
        self.out_of_scope_threshold = None
        self.reference_n = len(reference)
        if out_of_scope is not None:
            if OUT_OF_SCOPE_SCORE not in reference:
                raise ValueError(
                    f"reference records lack the '{OUT_OF_SCOPE_SCORE}' column that the "
                    "version's out-of-scope score needs; re-register it (attnops train)"
                )
            self.out_of_scope_threshold = float(out_of_scope["threshold"])
            self.reference_rate = float(self.flags(reference).mean())
            return
        if out_of_scope_threshold is None:
            raise ValueError(
                "neither an out-of-scope score nor a confidence threshold: the version's "
                "reference_profile.json has no 'out_of_scope' section; re-register it"
            )
        self._fit_distance(reference, out_of_scope_threshold, out_of_scope_label, distance_quantile)

    @classmethod
    def from_summary(
        cls, reference: pd.DataFrame, summary: dict[str, object], distance_quantile: float
    ) -> UnsupportedAssertionDetector:
        """The detector a version's `reference_profile.json` describes."""
        legacy = summary.get("out_of_scope_threshold")
        return cls(
            reference,
            out_of_scope=summary.get("out_of_scope"),
            out_of_scope_threshold=None if legacy is None else float(legacy),
            out_of_scope_label=summary.get("out_of_scope_label"),
            distance_quantile=distance_quantile,
        )

    def _fit_distance(
        self,
        reference: pd.DataFrame,
        confidence_threshold: float,
        out_of_scope_label: str | None,
        distance_quantile: float,
    ) -> None:
        for column in ("embedding", "confidence", "label"):
            if column not in reference:
                raise ValueError(f"reference records lack the '{column}' column")
        in_scope = (reference["label"] != out_of_scope_label).to_numpy()
        vectors = np.stack(reference["embedding"].to_numpy()).astype(np.float32)
        self.anchors = vectors[in_scope]
        if len(self.anchors) < 10:
            raise ValueError(f"need >= 10 in-scope reference records, got {len(self.anchors)}")
        self.confidence_threshold = confidence_threshold
        own = _nearest_distance(self.anchors, self.anchors, exclude_self=True)
        self.distance_threshold = float(np.quantile(own, distance_quantile))
        # The normal rate counts the whole reference, out-of-scope inputs included, as
        # live traffic has them; in-scope inputs leave themselves out of the neighbourhood.
        distance = np.empty(len(vectors), dtype=np.float32)
        distance[in_scope] = own
        distance[~in_scope] = _nearest_distance(vectors[~in_scope], self.anchors)
        confident = reference["confidence"].to_numpy() >= confidence_threshold
        self.reference_rate = float((confident & (distance > self.distance_threshold)).mean())

    def flags(self, records: pd.DataFrame) -> np.ndarray:
        """True for each record that asserts a label the input does not support."""
        if len(records) == 0:
            return np.zeros(0, dtype=bool)
        if self.out_of_scope_threshold is not None:
            if OUT_OF_SCOPE_SCORE in records:
                return records[OUT_OF_SCOPE_SCORE].to_numpy() > self.out_of_scope_threshold
            if "unsupported" in records:  # the inference log: judged when served
                return records["unsupported"].to_numpy(dtype=bool)
            raise ValueError(
                f"records have neither '{OUT_OF_SCOPE_SCORE}' nor 'unsupported' "
                f"(columns: {', '.join(map(str, records.columns))})"
            )
        vectors = np.stack(records["embedding"].to_numpy()).astype(np.float32)
        far = _nearest_distance(vectors, self.anchors) > self.distance_threshold
        return far & (records["confidence"].to_numpy() >= self.confidence_threshold)

    def labelled_flags(self, records: pd.DataFrame, label_names: tuple[str, ...]) -> np.ndarray:
        """Unsupported assertions where the truth is known (the gate's test split): an
        out-of-scope input given a label that the version's out-of-scope score let through.

        Versions without an out-of-scope score flag as `flags` does.
        """
        if self.out_of_scope_threshold is None:
            return self.flags(records)
        return ~records["label"].isin(label_names).to_numpy() & ~self.flags(records)

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
