"""TF-IDF + logistic regression on the same splits: what attention buys over bag-of-words."""

from __future__ import annotations

from collections.abc import Sequence

from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from sklearn.pipeline import Pipeline, make_pipeline


def tfidf_baseline(
    train_texts: Sequence[str],
    train_labels: Sequence[int],
    test_texts: Sequence[str],
    test_labels: Sequence[int],
) -> dict[str, float]:
    """Fit word 1-2-gram TF-IDF + logistic regression on train; score on test."""
    model = fit_tfidf_baseline(train_texts, train_labels)
    predicted = model.predict(list(test_texts))
    # Averaged over the same classes as the model's macro-F1, so the two compare.
    classes = sorted(set(train_labels))
    return {
        "baseline_accuracy": float(accuracy_score(test_labels, predicted)),
        "baseline_macro_f1": float(
            f1_score(test_labels, predicted, labels=classes, average="macro", zero_division=0)
        ),
    }


def fit_tfidf_baseline(train_texts: Sequence[str], train_labels: Sequence) -> Pipeline:
    """The fitted baseline (word 1-2-gram TF-IDF + logistic regression); `.predict(texts)`."""
    model = make_pipeline(
        TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1),
        LogisticRegression(max_iter=2000, C=10.0),
    )
    return model.fit(list(train_texts), list(train_labels))
