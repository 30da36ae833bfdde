"""Hallucination detector for generated outputs: text, attention and confidence, combined.

Three views of one (input, output) pair:

- text: the parts of `score_groundedness` of the output against source + context
  (unsupported facts by type, unsupported sentence share, novel trigram share, sentence
  similarity);
- attention: the lookback ratios (layers x heads, flattened) fed to their own L2 logistic
  regression (Lookback Lens, Chuang et al. 2024);
- confidence: mean and min log-probability of the output tokens, and of its fact tokens
  (those holding a digit): swapping one valid term of the input for another (the Pro plan's
  price for the Basic plan's) leaves the text check nothing to catch, but the model, having
  read the input, finds the swapped digits unlikely.

A logistic regression combines the text parts, the attention regression's logit and the two
log-probabilities. On the fitting set the attention logit is taken out-of-fold: an in-sample
logit from hundreds of weights would look more reliable than it is, and the combiner would
lean on it. The flag threshold lets at most `max_false_positive_rate` of the fitting set's
faithful outputs through as flagged. Every part is plain arrays (scaler means and scales,
coefficients), saved as JSON; scikit-learn, which fits them, is imported only to fit, so
that a server loading a detector does not pay for it at start.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from attnops.models.generation.decode import Signals
from attnops.models.groundedness import GroundednessResult, score_groundedness

TEXT_FEATURES = (
    "groundedness_score", "unsupported_facts", "unsupported_facts_per_sentence",
    "unsupported_numbers", "unsupported_dates", "unsupported_names", "negation_mismatches",
    "unsupported_sentence_share", "novel_trigram_share", "min_sentence_similarity",
    "mean_sentence_similarity",
)  # fmt: skip
LOGPROB_FEATURES = ("logprob_mean", "logprob_min", "fact_logprob_mean", "fact_logprob_min")
DETECTORS = ("text", "attention", "logprob", "combined")
DETECTOR_JSON = "hallucination_detector.json"
"""The fitted detector in a version's evaluation artifacts (`to_json`)."""
MIN_PER_CLASS = 5
"""Fewest faithful and hallucinated outputs to fit: the out-of-fold attention logit needs
both classes in every one of 5 folds."""


@dataclass(frozen=True)
class DetectorFeatures:
    """Features of n (input, output) pairs, row-aligned."""

    text: np.ndarray
    """(n, len(TEXT_FEATURES))"""
    lookback: np.ndarray
    """(n, layers * heads)"""
    logprob: np.ndarray
    """(n, len(LOGPROB_FEATURES)): mean and min log-probability of all output tokens, then of
    its fact tokens."""

    def __len__(self) -> int:
        return len(self.text)

    def subset(self, rows) -> DetectorFeatures:
        return DetectorFeatures(self.text[rows], self.lookback[rows], self.logprob[rows])


def text_features(result: GroundednessResult) -> list[float]:
    """One output's groundedness parts, in `TEXT_FEATURES` order."""
    n_sentences = len(result.sentence_similarity)
    similarity = np.array(result.sentence_similarity or (1.0,))
    return [
        result.score, result.n_unsupported_facts,
        result.n_unsupported_facts / max(n_sentences, 1), len(result.unsupported_numbers),
        len(result.unsupported_dates), len(result.unsupported_names),
        len(result.negation_mismatches), len(result.unsupported_sentences) / max(n_sentences, 1),
        result.novel_ngram_share, float(similarity.min()), float(similarity.mean()),
    ]  # fmt: skip


def detector_features(
    sources: Sequence[str],
    contexts: Sequence[str],
    outputs: Sequence[str],
    signals: Sequence[Signals],
    *,
    encoder=None,
) -> DetectorFeatures:
    """Features of each output against its own input (source + "\\n" + context).

    An output without (fact) tokens gets (fact) log-probabilities 0: nothing it was unsure of.
    """
    if not len(sources) == len(contexts) == len(outputs) == len(signals):
        raise ValueError(
            f"{len(sources)} sources, {len(contexts)} contexts, {len(outputs)} outputs and "
            f"{len(signals)} signals; pass one of each per output"
        )
    inputs = [f"{s}\n{c}" if c else s for s, c in zip(sources, contexts, strict=True)]
    results = score_groundedness(inputs, outputs, encoder=encoder)
    logprob = [_logprob_features(s) for s in signals]
    return DetectorFeatures(
        text=np.array([text_features(r) for r in results], dtype=np.float64),
        lookback=np.array([s.lookback.ravel() for s in signals], dtype=np.float64),
        logprob=np.array(logprob, dtype=np.float64).reshape(len(signals), len(LOGPROB_FEATURES)),
    )


def _logprob_features(signals: Signals) -> list[float]:
    """Mean and min log-probability over all tokens, then over the fact tokens."""
    values = np.asarray(signals.token_logprobs, dtype=np.float64)
    facts = np.asarray(signals.fact_tokens, dtype=bool)
    if len(facts) and len(facts) != len(values):
        raise ValueError(
            f"signals hold {len(values)} token log-probabilities but {len(facts)} fact flags"
        )
    fact_values = values[facts] if len(facts) else values[:0]
    return [
        float(stat(v)) if len(v) else 0.0
        for v in (values, fact_values)
        for stat in (np.mean, np.min)
    ]


@dataclass(frozen=True)
class _Linear:
    """Standardised logistic regression as plain arrays; `logit` is numpy only."""

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, c: float) -> _Linear:
        from sklearn.linear_model import LogisticRegression  # fitting only: see the docstring

        mean, scale = x.mean(0), x.std(0)
        scale = np.where(scale > 1e-12, scale, 1.0)  # constant features: left at 0
        model = LogisticRegression(C=c, max_iter=5000).fit((x - mean) / scale, y)
        return cls(mean, scale, model.coef_[0], float(model.intercept_[0]))

    def logit(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) / self.scale) @ self.coef + self.intercept

    def to_dict(self) -> dict:
        arrays = {k: getattr(self, k).tolist() for k in ("mean", "scale", "coef")}
        return arrays | {"intercept": self.intercept}

    @classmethod
    def from_dict(cls, d: dict) -> _Linear:
        arrays = {k: np.asarray(d[k], dtype=np.float64) for k in ("mean", "scale", "coef")}
        return cls(**arrays, intercept=float(d["intercept"]))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -500, 500)))


def check_labels(labels: np.ndarray, source: str, minimum: int = MIN_PER_CLASS) -> None:
    """Raises a ValueError naming `source` when either class has fewer than `minimum` rows."""
    n_hallucinated = int(np.sum(labels == 1))
    n_faithful = int(np.sum(labels == 0))
    if n_faithful < minimum or n_hallucinated < minimum:
        raise ValueError(
            f"{source}: {n_faithful} faithful (label 0) and {n_hallucinated} hallucinated "
            f"(label 1) outputs; the hallucination detector needs at least {minimum} of each. "
            "Label more outputs or raise generation.detector_fit_share"
        )


class HallucinationDetector:
    """Scores P(hallucinated) per output; `flag` applies the fitted threshold."""

    def __init__(
        self,
        max_false_positive_rate: float = 0.1,
        *,
        attention_c: float = 0.05,
        c: float = 1.0,
        n_folds: int = 5,
    ):
        self.max_false_positive_rate = max_false_positive_rate
        self.attention_c, self.c, self.n_folds = attention_c, c, n_folds
        self.parts: dict[str, _Linear] = {}
        self.threshold: float | None = None

    def fit(
        self,
        features: DetectorFeatures,
        labels: Sequence[int],
        *,
        groups: Sequence | None = None,
        source: str = "the labelled set",
    ) -> HallucinationDetector:
        """Fits the three single-view regressions, the combiner and the threshold.

        Args:
            features: Features of the fitting outputs.
            labels: 1 = hallucinated, 0 = faithful.
            groups: Optional group per row (e.g. the ticket); rows of a group share a fold
                of the out-of-fold attention logit, so a faithful reply and its altered twin
                never inform each other's score.
            source: Names the labelled data in errors (e.g. its path).
        """
        y = np.asarray(labels, dtype=int)
        if len(y) != len(features):
            raise ValueError(f"{source}: {len(features)} feature rows but {len(y)} labels")
        check_labels(y, source)
        from sklearn.model_selection import GroupKFold, StratifiedKFold  # see the docstring

        attention_oof = np.zeros(len(y))
        if groups is None:
            folds = StratifiedKFold(self.n_folds, shuffle=True, random_state=0).split(y, y)
        else:
            groups = np.asarray(groups, dtype=object)
            n_splits = min(self.n_folds, len(set(groups)))
            folds = GroupKFold(n_splits).split(y, y, groups)
        for train, held in folds:
            if len(set(y[train])) < 2:
                raise ValueError(f"{source}: a fold holds one class only; label more groups")
            part = _Linear.fit(features.lookback[train], y[train], self.attention_c)
            attention_oof[held] = part.logit(features.lookback[held])
        self.parts = {
            "text": _Linear.fit(features.text, y, self.c),
            "attention": _Linear.fit(features.lookback, y, self.attention_c),
            "logprob": _Linear.fit(features.logprob, y, self.c),
            "combined": _Linear.fit(self._stack(features, attention_oof), y, self.c),
        }
        fit_scores = _sigmoid(self.parts["combined"].logit(self._stack(features, attention_oof)))
        self.threshold = self._threshold(fit_scores[y == 0])
        return self

    def _threshold(self, faithful_scores: np.ndarray) -> float:
        """Lowest cut flagging at most max_false_positive_rate of `faithful_scores` (flag =
        score >= cut): just above the (k+1)-th highest, k = floor(rate x n)."""
        ranked = np.sort(faithful_scores)[::-1]
        allowed = int(np.floor(self.max_false_positive_rate * len(ranked)))
        return float(np.nextafter(ranked[allowed], np.inf))

    @staticmethod
    def _stack(features: DetectorFeatures, attention_logit: np.ndarray) -> np.ndarray:
        return np.column_stack([features.text, attention_logit, features.logprob])

    @property
    def feature_names(self) -> list[str]:
        """Inputs of the combiner, in order."""
        return [*TEXT_FEATURES, "attention_logit", *LOGPROB_FEATURES]

    def component_scores(self, features: DetectorFeatures) -> dict[str, np.ndarray]:
        """P(hallucinated) from each view alone and combined, keyed by `DETECTORS`."""
        if not self.parts:
            raise ValueError("the detector is not fitted; call fit() or load one with from_json")
        attention = self.parts["attention"].logit(features.lookback)
        logits = {
            "text": self.parts["text"].logit(features.text),
            "attention": attention,
            "logprob": self.parts["logprob"].logit(features.logprob),
            "combined": self.parts["combined"].logit(self._stack(features, attention)),
        }
        return {name: _sigmoid(z) for name, z in logits.items()}

    def score(self, features: DetectorFeatures) -> np.ndarray:
        """Combined P(hallucinated) per output."""
        return self.component_scores(features)["combined"]

    def flag(self, features: DetectorFeatures) -> np.ndarray:
        """True where the combined score reaches the fitted threshold."""
        return self.score(features) >= self.threshold

    def to_json(self) -> str:
        """Everything needed to score, as plain JSON (no pickle)."""
        return json.dumps({
            "max_false_positive_rate": self.max_false_positive_rate,
            "attention_c": self.attention_c, "c": self.c, "n_folds": self.n_folds,
            "threshold": self.threshold, "feature_names": self.feature_names,
            "parts": {name: part.to_dict() for name, part in self.parts.items()},
        })  # fmt: skip

    @classmethod
    def from_json(cls, text: str) -> HallucinationDetector:
        """Inverse of `to_json`; scores are identical to the saved detector's."""
        d = json.loads(text)
        detector = cls(d["max_false_positive_rate"], attention_c=d["attention_c"], c=d["c"],
                       n_folds=d["n_folds"])  # fmt: skip
        if d["feature_names"] != detector.feature_names:
            raise ValueError(
                f"saved detector features {d['feature_names']} differ from this version's "
                f"{detector.feature_names}; refit the detector"
            )
        detector.parts = {name: _Linear.from_dict(p) for name, p in d["parts"].items()}
        detector.threshold = d["threshold"]
        return detector
