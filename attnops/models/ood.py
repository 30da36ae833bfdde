"""Out-of-scope detection: scores compared and one chosen on validation, saved with the version.

A classifier always answers with one of its classes; whether the input belongs to any of
them is a separate question, answered by a score (`attnops.models.ood_scorers`: the
softmax baseline, energy, Mahalanobis and knn distance on the output layer's inputs).

The feature scores are fitted on the training split, never on the inputs the choice
and the threshold are made on. On validation the score that rejects the most
out-of-scope inputs at the spec's in-scope rejection rate is chosen (AUROC breaks ties);
without enough out-of-scope validation rows the spec's default is. Each score's threshold
rejects at most that share of in-scope validation inputs. The chosen score, fitted, is
saved with the version's reference profile so the gate, serving and monitoring flag the
same inputs the evaluation measured.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from attnops.models.ood_scorers import SCORERS, Scorer, fit_scorers, scorer_from_state
from attnops.spec import EvaluationSpec

OUT_OF_SCOPE_FILE = "reference_out_of_scope.npz"
"""Saved next to the reference profile (`reference_*` files travel in its artifact folder)."""
OUT_OF_SCOPE_SCORE = "out_of_scope_score"
"""Record column of the version's chosen score (`attnops.models.records`)."""
MIN_VALIDATION_OUT_OF_SCOPE = 20
"""Fewer out-of-scope validation inputs than this and recall moves by 5+ points per input:
the spec's default score is used instead of a choice that would be noise."""


def threshold_at(in_scope_scores: np.ndarray, rejection_rate: float) -> float:
    """The lowest threshold that rejects (score > threshold) at most `rejection_rate` of
    the in-scope inputs."""
    ordered = np.sort(in_scope_scores)[::-1]
    k = int(np.floor(rejection_rate * len(ordered)))
    return float(ordered[min(k, len(ordered) - 1)])


def separation(scores: np.ndarray, in_scope: np.ndarray, threshold: float) -> dict[str, float]:
    """AUROC (out-of-scope as positives), recall of out-of-scope inputs and the in-scope
    rejection at `threshold`; NaN for what one side's absence leaves undefined."""
    # Imported here: the server loads this module but never calls this; scikit-learn is slow
    # to import (0.4 s of the 3.3 s the server takes to import, on 2 cores).
    from sklearn.metrics import roc_auc_score

    rejected = scores > threshold
    has_both = in_scope.any() and (~in_scope).any()
    return {
        "auroc": float(roc_auc_score(~in_scope, scores)) if has_both else float("nan"),
        "recall": float(rejected[~in_scope].mean()) if (~in_scope).any() else float("nan"),
        "in_scope_rejection": float(rejected[in_scope].mean()) if in_scope.any() else float("nan"),
        "threshold": threshold,
    }


@dataclass
class OutOfScopeDetector:
    """Fitted scores, each with its validation threshold, and the one chosen to flag inputs.

    Scores are higher for inputs less like the training data; an input is out of scope
    when the chosen score is above its threshold.
    """

    scorers: dict[str, Scorer]
    thresholds: dict[str, float]
    chosen: str
    rejection_rate: float
    reason: str
    """Why `chosen` (the validation figures, or the default and why no choice was made)."""
    validation: dict[str, dict[str, float]] = field(default_factory=dict)
    """Per score: `separation` on the validation split."""

    @property
    def threshold(self) -> float:
        return self.thresholds[self.chosen]

    def scores(self, logits: np.ndarray, features: np.ndarray) -> dict[str, np.ndarray]:
        """Every held score of each input (an evaluation detector holds all it compared)."""
        return {name: s.score(logits, features) for name, s in self.scorers.items()}

    def score(self, logits: np.ndarray, features: np.ndarray) -> np.ndarray:
        """The chosen score of each input."""
        return self.scorers[self.chosen].score(logits, features)

    def summary(self) -> dict[str, object]:
        """What the reference profile and evaluation.json record about the choice."""
        return {
            "score": self.chosen,
            "threshold": self.threshold,
            "in_scope_rejection_rate": self.rejection_rate,
            "reason": self.reason,
            "validation": self.validation,
        }

    def save(self, out_dir: Path) -> Path:
        """Write the chosen score (fitted) and its threshold to `out_dir/OUT_OF_SCOPE_FILE`."""
        path = out_dir / OUT_OF_SCOPE_FILE
        meta = json.dumps({k: v for k, v in self.summary().items() if k != "validation"})
        state = {f"state.{k}": v for k, v in self.scorers[self.chosen].state().items()}
        with path.open("wb") as f:  # a file object: np.savez would append .npz to a str
            np.savez(f, meta=np.asarray(meta), **state)
        return path

    @classmethod
    def load(cls, path: Path) -> OutOfScopeDetector:
        """The detector `save` wrote: the chosen score only."""
        with np.load(path, allow_pickle=False) as stored:
            meta = json.loads(str(stored["meta"]))
            state = {k.removeprefix("state."): stored[k] for k in stored.files if k != "meta"}
        name = meta["score"]
        if name not in SCORERS:
            raise ValueError(
                f"{path}: unknown out-of-scope score '{name}' (known: {', '.join(SCORERS)}); "
                "it was written by a newer attnops"
            )
        return cls(
            scorers={name: scorer_from_state(name, state)},
            thresholds={name: float(meta["threshold"])},
            chosen=name,
            rejection_rate=float(meta["in_scope_rejection_rate"]),
            reason=meta["reason"],
        )


def load_detector(folder: Path) -> OutOfScopeDetector | None:
    """The detector saved in a version's reference-profile `folder`; None for a version
    registered before out-of-scope scores were stored."""
    path = folder / OUT_OF_SCOPE_FILE
    return OutOfScopeDetector.load(path) if path.is_file() else None


def fit_detector(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    *,
    validation_logits: np.ndarray,
    validation_features: np.ndarray,
    validation_in_scope: np.ndarray,
    spec: EvaluationSpec,
) -> OutOfScopeDetector:
    """Fit the spec's scores on training features; threshold and choose on validation.

    Args:
        train_features: the output layer's inputs (`Predictions.features`) on (a sample
            of) the training split.
        train_labels: their class indices.
        validation_in_scope: True for validation rows of a trained class, False for
            out-of-scope rows (the spec's out_of_scope_label).
    """
    scorers = fit_scorers(
        spec.out_of_scope_scores, train_features, train_labels, knn_k=spec.out_of_scope_knn_k
    )
    val_scores = {
        name: s.score(validation_logits, validation_features) for name, s in scorers.items()
    }
    rate = spec.in_scope_rejection_rate
    thresholds = {
        name: threshold_at(values[validation_in_scope], rate) for name, values in val_scores.items()
    }
    validation = {
        name: separation(values, validation_in_scope, thresholds[name])
        for name, values in val_scores.items()
    }
    n_out = int((~validation_in_scope).sum())
    if n_out >= MIN_VALIDATION_OUT_OF_SCOPE:
        chosen = max(validation, key=lambda n: (validation[n]["recall"], validation[n]["auroc"]))
        best = validation[chosen]
        reason = (
            f"highest out-of-scope recall at {rate:.0%} in-scope rejection on validation "
            f"({n_out} out-of-scope vs {int(validation_in_scope.sum())} in-scope inputs): "
            f"recall {best['recall']:.3f}, AUROC {best['auroc']:.3f}; "
            + ", ".join(
                f"{name} {v['recall']:.3f}/{v['auroc']:.3f}"
                for name, v in validation.items()
                if name != chosen
            )
        )
    else:
        chosen = spec.out_of_scope_default_score
        reason = (
            f"validation has {n_out} out-of-scope inputs (fewer than "
            f"{MIN_VALIDATION_OUT_OF_SCOPE} to choose by): evaluation.out_of_scope_default_score"
        )
    return OutOfScopeDetector(
        scorers=scorers,
        thresholds=thresholds,
        chosen=chosen,
        rejection_rate=rate,
        reason=reason,
        validation=validation,
    )


def out_of_scope_report(
    records: pd.DataFrame, in_scope: np.ndarray, detector: OutOfScopeDetector
) -> tuple[dict[str, float], dict[str, object]]:
    """How each score separates the records' out-of-scope inputs at its validation threshold.

    Args:
        records: scored by `score_records` with `detector` (the test split's reference).
        in_scope: True for records of a trained class.

    Returns:
        Flat metrics (none without out-of-scope records) and the evaluation.json section.
        `unsupported_assertion_rate` is the share of out-of-scope inputs the chosen score
        lets through: each is given a class it does not belong to, unflagged.
    """
    section: dict[str, object] = {**detector.summary(), "test": {}}
    if in_scope.all():
        return {}, section
    several = len(detector.scorers) > 1
    test = {
        name: separation(
            records[f"{OUT_OF_SCOPE_SCORE}.{name}" if several else OUT_OF_SCOPE_SCORE].to_numpy(),
            in_scope,
            detector.thresholds[name],
        )
        for name in detector.scorers
    }
    section["test"] = test
    chosen = test[detector.chosen]
    metrics = {
        "unsupported_assertion_rate": 1.0 - chosen["recall"],
        "out_of_scope_recall": chosen["recall"],
        "out_of_scope_auroc": chosen["auroc"],
        "out_of_scope_in_scope_rejection": chosen["in_scope_rejection"],
        "out_of_scope_threshold": detector.threshold,
        "out_of_scope_n": float((~in_scope).sum()),
    }
    for name, values in test.items():
        metrics[f"out_of_scope_auroc.{name}"] = values["auroc"]
        metrics[f"out_of_scope_recall.{name}"] = values["recall"]
    return metrics, section
