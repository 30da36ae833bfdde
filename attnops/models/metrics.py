"""Quality metrics over predictions: pure functions of arrays, no model involved."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)


def classification_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, label_names: Sequence[str]
) -> dict[str, object]:
    """Accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix."""
    classes = list(range(len(label_names)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=classes, zero_division=0
    )
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(
            f1_score(y_true, y_pred, labels=classes, average="macro", zero_division=0)
        ),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(label_names)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=classes).tolist(),
    }


def expected_calibration_error(
    confidence: np.ndarray, correct: np.ndarray, n_bins: int
) -> tuple[float, pd.DataFrame]:
    """ECE over equal-width confidence bins, and the per-bin table for a reliability diagram."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, n_bins - 1)
    rows = []
    ece = 0.0
    for b in range(n_bins):
        in_bin = bins == b
        count = int(in_bin.sum())
        mean_conf = float(confidence[in_bin].mean()) if count else float("nan")
        accuracy = float(correct[in_bin].mean()) if count else float("nan")
        if count:
            ece += count / len(confidence) * abs(accuracy - mean_conf)
        rows.append(
            {
                "low": edges[b],
                "high": edges[b + 1],
                "count": count,
                "confidence": mean_conf,
                "accuracy": accuracy,
            }
        )
    return float(ece), pd.DataFrame(rows)


def length_bucket(n_tokens: np.ndarray, edges: Sequence[int]) -> np.ndarray:
    """Label each token count with its bucket, e.g. '<=16', '17-32', '>64'."""
    names, low = [], 1
    for edge in edges:
        names.append(f"<={edge}" if low == 1 else f"{low}-{edge}")
        low = edge + 1
    names.append(f">{edges[-1]}")
    return np.asarray(names, dtype=object)[np.searchsorted(edges, n_tokens, side="left")]


def slice_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, slices: dict[str, np.ndarray]
) -> list[dict[str, object]]:
    """Accuracy and macro-F1 (over the classes present) for every value of every slice column."""
    rows = []
    for column, values in slices.items():
        for value in sorted(set(values)):
            mask = values == value
            t, p = y_true[mask], y_pred[mask]
            present = sorted(set(t))
            rows.append(
                {
                    "slice": column,
                    "value": str(value),
                    "n": int(mask.sum()),
                    "accuracy": float((t == p).mean()),
                    "macro_f1": float(
                        f1_score(t, p, labels=present, average="macro", zero_division=0)
                    ),
                }
            )
    return rows


def out_of_scope_threshold(in_scope_confidence: np.ndarray, rejection_rate: float) -> float:
    """The highest confidence threshold that rejects at most `rejection_rate` of in-scope inputs."""
    ordered = np.sort(in_scope_confidence)
    k = int(np.floor(rejection_rate * len(ordered)))
    return float(ordered[k]) if k < len(ordered) else float(ordered[-1])


def percentiles(
    values: np.ndarray, prefix: str, qs: Sequence[int] = (50, 95, 99)
) -> dict[str, float]:
    """{'{prefix}_p50': ..., ...}."""
    return {f"{prefix}_p{q}": float(np.percentile(values, q)) for q in qs}
