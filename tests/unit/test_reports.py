"""Evidently drift and classification reports over record frames built in code."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from attnops.demo.tickets import INTENTS, generate_tickets
from attnops.monitors.reports import classification_report, drift_report

N = 200


def record_frame(seed: int, *, shifted: bool = False) -> pd.DataFrame:
    """One row per model input; `shifted`: n_tokens x3, 3 predicted labels, moved embeddings."""
    rng = np.random.default_rng(seed)
    tickets = generate_tickets(N, seed=seed)
    n_tokens = rng.poisson(40, N) * (3 if shifted else 1)
    correct = rng.random(N) < 0.8
    prediction = np.where(correct, tickets["intent"], rng.choice(INTENTS, N))
    if shifted:
        prediction = rng.choice(INTENTS[:3], N)
    frame = pd.DataFrame(
        {
            "text": tickets["text"],
            "text_chars": tickets["text"].str.len(),
            "n_tokens": n_tokens,
            "truncated": n_tokens > 128,
            "unk_rate": rng.beta(1, 60, N),
            "prediction": prediction,
            "confidence": rng.beta(5, 2, N),
            "label": tickets["intent"],
            "channel": tickets["channel"],
        }
    )
    frame["embedding"] = list(rng.normal(0.5 if shifted else 0.0, 1.0, (N, 32)).astype(np.float32))
    for layer in range(2):
        for head in range(2):
            entropy = rng.beta(5, 3, N)
            entropy[rng.random(N) < 0.5] = np.nan  # rows whose attention was not sampled
            frame[f"l{layer}h{head}"] = entropy
    return frame


@pytest.fixture(scope="module")
def reference() -> pd.DataFrame:
    return record_frame(1)


@pytest.fixture(scope="module")
def shifted(reference, tmp_path_factory):
    out = tmp_path_factory.mktemp("drift") / "drift.html"
    summary = drift_report(
        reference, record_frame(2, shifted=True), out, title="Drift <shifted>", tsne_rows=100
    )
    return summary, out


def test_drift_report_writes_html_with_columns_and_title(shifted):
    """The HTML holds the drifted columns, the per-layer entropy and the escaped title."""
    summary, out = shifted
    page = out.read_text(encoding="utf-8")
    assert len(page) > 100_000
    for name in ("n_tokens", "prediction", "attention_entropy_layer1", "Drift &lt;shifted&gt;"):
        assert name in page
    assert [p.name for p in out.parent.iterdir()] == ["drift.html"]  # no temp file left
    json.dumps(summary)


def test_shifted_columns_are_reported_as_drifted(shifted):
    """n_tokens x3, a 3-label prediction mix and moved embeddings show up as drift."""
    summary, _ = shifted
    for column in ("n_tokens", "prediction", "embedding"):
        assert summary[f"drift.{column}.detected"], column
    assert summary["drift.n_tokens.p_value"] < 1e-6
    assert "Value Drift for column n_tokens" in summary["failed_tests"]
    assert summary["drifted_columns"] >= 3  # n_tokens, truncated, prediction
    assert summary["tests_failed"] == len(summary["failed_tests"]) > 0
    assert "drift.attention_entropy_layer0.score" in summary
    assert not any(key.startswith("drift.l0h0") for key in summary)


def test_same_distribution_shows_no_drift(reference, tmp_path):
    """Another sample of the same generator: no column the shift test relies on drifts."""
    summary = drift_report(
        reference, record_frame(3), tmp_path / "same.html", title="same", tsne_rows=100
    )
    assert summary["drifted_columns"] == 0  # seeded: no column drifts at all
    for column in ("n_tokens", "prediction", "label", "text", "embedding"):
        assert not summary[f"drift.{column}.detected"], column
    assert summary["rows_reference"] == summary["rows_current"] == N


def test_missing_prediction_raises_and_writes_nothing(reference, tmp_path):
    """A missing required column is named in the error and no HTML is left behind."""
    current = record_frame(4).drop(columns="prediction")
    with pytest.raises(ValueError, match="'prediction' not found in the current frame"):
        drift_report(reference, current, tmp_path / "drift.html", title="x")
    assert list(tmp_path.iterdir()) == []


MARGIN = {"non_inferiority_margin": 0.03}


def classified(seed: int, accuracy: float) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    label = rng.choice(INTENTS, 300)
    wrong = rng.random(300) > accuracy
    prediction = np.where(wrong, rng.choice(INTENTS, 300), label)
    return pd.DataFrame({"label": label, "prediction": prediction, "confidence": rng.random(300)})


def test_classification_report_against_champion(tmp_path):
    """A clearly better candidate passes every non-inferiority test; a worse one fails them."""
    champion, candidate = classified(0, 0.6), classified(0, 0.9)
    out = tmp_path / "cls.html"
    better = classification_report(
        champion, candidate, out, labels=INTENTS, title="candidate", **MARGIN
    )
    expected = float((candidate["label"] == candidate["prediction"]).mean())
    assert better["accuracy_current"] == pytest.approx(expected)
    assert better["accuracy_reference"] < better["accuracy_current"]
    assert better["f1_reference"] < better["f1_current"]
    assert better["tests_failed"] == 0 and better["tests_total"] >= 4
    assert "track_order" in out.read_text(encoding="utf-8")
    worse = classification_report(
        candidate, champion, out, labels=INTENTS, title="candidate", **MARGIN
    )
    assert any(name.startswith("Accuracy") for name in worse["failed_tests"])


def test_classification_report_without_champion(tmp_path):
    """With no champion the reference side is None and the candidate is still reported."""
    out = tmp_path / "cls.html"
    summary = classification_report(
        None, classified(1, 0.8), out, labels=INTENTS, title="first", **MARGIN
    )
    assert summary["accuracy_reference"] is None and summary["f1_reference"] is None
    assert 0.7 < summary["accuracy_current"] < 0.9
    assert summary[f"f1_current.{INTENTS[0]}"] is not None
    assert out.stat().st_size > 100_000
    json.dumps(summary)


def test_classification_report_rejects_unknown_labels(tmp_path):
    """A prediction outside the model's label set is a wiring error, not a class."""
    current = classified(2, 0.8)
    current.loc[0, "prediction"] = "not_an_intent"
    with pytest.raises(ValueError, match="not_an_intent"):
        classification_report(
            None, current, tmp_path / "c.html", labels=INTENTS, title="x", **MARGIN
        )
    assert not (tmp_path / "c.html").exists()


def test_classification_report_uses_the_margin_it_is_given(tmp_path):
    """A candidate 2 points behind passes at the gate's margin 0.05 and fails at 0.01."""
    champion = classified(3, 0.9)
    candidate = champion.copy()
    right = np.flatnonzero(candidate["label"] == candidate["prediction"])[:6]  # 6/300 = 0.02
    candidate.loc[right, "prediction"] = [
        INTENTS[(INTENTS.index(v) + 1) % len(INTENTS)] for v in candidate.loc[right, "label"]
    ]
    kwargs = {"labels": INTENTS, "title": "candidate"}
    out = tmp_path / "cls.html"
    wide = classification_report(champion, candidate, out, non_inferiority_margin=0.05, **kwargs)
    assert wide["accuracy_reference"] - wide["accuracy_current"] == pytest.approx(0.02)
    assert wide["tests_failed"] == 0, wide["failed_tests"]
    tight = classification_report(champion, candidate, out, non_inferiority_margin=0.01, **kwargs)
    assert any(name.startswith("Accuracy") for name in tight["failed_tests"])


def test_classification_report_with_a_champion_answering_a_class_the_candidate_lacks(tmp_path):
    """A narrower candidate: the report over both label sets works and shows the class."""
    candidate = classified(4, 0.8)
    champion = candidate.copy()
    champion.loc[:9, "prediction"] = "meal_suggestion"
    summary = classification_report(
        champion,
        candidate,
        tmp_path / "cls.html",
        labels=[*INTENTS, "meal_suggestion"],
        title="narrower",
        **MARGIN,
    )
    assert summary["accuracy_current"] == pytest.approx(
        float((candidate["label"] == candidate["prediction"]).mean())
    )
    assert "meal_suggestion" in (tmp_path / "cls.html").read_text(encoding="utf-8")


@pytest.mark.parametrize("names", [("0", "1"), ("neg", "pos")])
def test_classification_report_on_a_two_class_task(tmp_path, names):
    """Sentiment, spam, churn: Evidently reads two classes as a binary task; the report
    names the later label the positive one and compares the versions as for more classes."""
    rng = np.random.default_rng(5)
    label = rng.choice(names, 300)
    flip = {names[0]: names[1], names[1]: names[0]}

    def answers(accuracy):
        wrong = rng.random(300) > accuracy
        return pd.DataFrame(
            {"label": label, "prediction": np.where(wrong, [flip[v] for v in label], label)}
        )

    champion, candidate = answers(0.7), answers(0.9)
    out = tmp_path / "binary.html"
    summary = classification_report(champion, candidate, out, labels=names, title="t", **MARGIN)
    expected = float((candidate["label"] == candidate["prediction"]).mean())
    assert summary["accuracy_current"] == pytest.approx(expected)
    assert summary["accuracy_reference"] < summary["accuracy_current"]
    assert summary["tests_failed"] == 0 and summary["tests_total"] >= 4


def test_a_champion_evidently_cannot_set_beside_the_candidate_is_left_out_and_said(tmp_path):
    """A champion answering two classes on a test split of three: the candidate's side is
    reported, and the title says why the champion's is not."""
    candidate = classified(6, 0.8)
    champion = candidate.assign(label=INTENTS[0], prediction=INTENTS[1])
    out = tmp_path / "cls.html"
    summary = classification_report(
        champion, candidate, out, labels=INTENTS, title="narrow", **MARGIN
    )
    assert summary["accuracy_reference"] is None and summary["accuracy_current"] > 0.7
    assert "champion left out: its answers and labels hold 2 classes" in out.read_text(
        encoding="utf-8"
    )


def test_a_two_class_candidate_beside_a_champion_answering_a_third_class(tmp_path):
    """The champion knew 'neutral', the candidate does not: its binary rates are per class,
    so the champion's side is left out, said in the title, rather than crashing the gate."""
    rng = np.random.default_rng(7)
    label = rng.choice(["neg", "pos"], 200)
    candidate = pd.DataFrame({"label": label, "prediction": label})
    champion = candidate.assign(prediction=np.where(rng.random(200) < 0.8, label, "neutral"))
    out = tmp_path / "cls.html"
    labels = ["neg", "neutral", "pos"]
    summary = classification_report(champion, candidate, out, labels=labels, title="t", **MARGIN)
    assert summary["accuracy_current"] == 1.0 and summary["accuracy_reference"] is None
    assert "champion left out: its answers and labels hold 3 classes" in out.read_text(
        encoding="utf-8"
    )
