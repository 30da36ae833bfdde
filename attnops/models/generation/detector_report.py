"""How well the hallucination detector works: ROC AUC per view and kind, and a grouped split.

Kept apart from `detector` so scoring in production does not load evaluation helpers.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import roc_auc_score

from attnops.models.generation.detector import DetectorFeatures, HallucinationDetector, check_labels


def auc_report(
    detector: HallucinationDetector,
    features: DetectorFeatures,
    labels: Sequence[int],
    kinds: Sequence[str] | None = None,
    *,
    source: str = "the held-out set",
) -> dict:
    """ROC AUC of each detector alone and combined, overall and per kind of hallucination.

    Per kind, the hallucinated outputs of that kind are ranked against the faithful outputs
    of the same kind when there are any (twins), else against all faithful outputs. A kind
    with no hallucinated output gets no entry.

    Returns:
        {"overall": {detector: auc}, "per_kind": {kind: {detector: auc}}, "n_faithful",
        "n_hallucinated", "false_positive_rate", "recall"} (the last two at the threshold).
    """
    y = np.asarray(labels, dtype=int)
    check_labels(y, source, minimum=1)
    scores = detector.component_scores(features)
    report = {"overall": {k: float(roc_auc_score(y, s)) for k, s in scores.items()}}
    per_kind = {}
    if kinds is not None:
        kinds = np.asarray(kinds, dtype=object)
        for kind in sorted(set(kinds[y == 1])):
            negatives = (y == 0) & (kinds == kind)
            rows = ((y == 1) & (kinds == kind)) | (negatives if negatives.any() else y == 0)
            per_kind[kind] = {k: float(roc_auc_score(y[rows], s[rows])) for k, s in scores.items()}
    flagged = scores["combined"] >= detector.threshold
    return report | {
        "per_kind": per_kind,
        "n_faithful": int(np.sum(y == 0)),
        "n_hallucinated": int(np.sum(y == 1)),
        "false_positive_rate": float(flagged[y == 0].mean()),
        "recall": float(flagged[y == 1].mean()),
    }


def split_fit_holdout(
    groups: Sequence, fit_share: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (fit, held out), whole groups on one side (a reply and its twins together).

    `fit_share` of the groups, shuffled with `seed`, go to the fitting part.
    """
    groups = np.asarray(groups, dtype=object)
    unique = np.array(sorted(set(groups), key=str), dtype=object)
    order = np.random.default_rng(seed).permutation(len(unique))
    n_fit = min(max(round(fit_share * len(unique)), 1), len(unique) - 1)
    fit_groups = set(unique[order[:n_fit]])
    in_fit = np.array([g in fit_groups for g in groups])
    return np.flatnonzero(in_fit), np.flatnonzero(~in_fit)
