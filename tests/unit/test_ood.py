"""Out-of-scope scores: known answers on synthetic embeddings, the choice, the threshold,
persistence, and the records and served answers they flag."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from attnops.models.modeling import build_classifier
from attnops.models.ood import (
    OUT_OF_SCOPE_FILE,
    OUT_OF_SCOPE_SCORE,
    OutOfScopeDetector,
    fit_detector,
    load_detector,
    out_of_scope_report,
    separation,
    threshold_at,
)
from attnops.models.profile import EmbeddingProjection, write_profile_summary
from attnops.models.records import score_records
from attnops.models.registry import TAG
from attnops.models.versions import REFERENCE_FOLDER, LoadedVersion
from attnops.monitors.hallucination import UnsupportedAssertionDetector
from attnops.serving.engine import ModelSlot
from attnops.spec import EvaluationSpec, ModelSpec, ServingSpec
from tests.conftest import TINY_BERT

CLASSES, WIDTH = 5, 16


def clusters(n_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit-variance Gaussian clusters around means 8 apart (one axis per class)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(CLASSES), n_per_class)
    means = 8.0 * np.eye(CLASSES, WIDTH)
    return means[labels] + rng.normal(0, 1, (len(labels), WIDTH)), labels


def logits_of(embeddings: np.ndarray) -> np.ndarray:
    """A linear head that separates the clusters: class c scores along axis c."""
    return embeddings[:, :CLASSES]


def overconfident_outliers(n: int, seed: int) -> np.ndarray:
    """Out-of-scope inputs the head is *more* sure about than any training input: far out
    along a class axis, where softmax and energy see a textbook in-scope input."""
    rng = np.random.default_rng(seed)
    points = rng.normal(0, 1, (n, WIDTH))
    points[np.arange(n), rng.integers(0, CLASSES, n)] += 40.0
    return points


def off_manifold(n: int, seed: int) -> np.ndarray:
    """Out-of-scope inputs in directions no class uses."""
    rng = np.random.default_rng(seed)
    points = rng.normal(0, 1, (n, WIDTH))
    points[:, CLASSES:] += 8.0
    return points


def validation(out_of_scope: np.ndarray, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings, in_scope) of 60 in-scope inputs per class plus `out_of_scope`."""
    inside, _ = clusters(60, seed)
    embeddings = np.concatenate([inside, out_of_scope])
    return embeddings, np.arange(len(embeddings)) < len(inside)


@pytest.fixture(scope="module")
def fitted() -> OutOfScopeDetector:
    train, labels = clusters(100, seed=0)
    val, in_scope = validation(overconfident_outliers(100, seed=2))
    return fit_detector(
        train,
        labels,
        validation_logits=logits_of(val),
        validation_features=val,
        validation_in_scope=in_scope,
        spec=EvaluationSpec(out_of_scope_knn_k=5),
    )


@pytest.mark.parametrize("name", ["mahalanobis", "knn"])
def test_embedding_scores_separate_points_far_from_every_class(fitted, name):
    inside, _ = clusters(10, seed=3)  # 50 inputs
    outside = off_manifold(50, seed=4)
    scores = fitted.scorers[name].score(
        logits_of(np.concatenate([inside, outside])), np.concatenate([inside, outside])
    )
    in_scope = np.arange(100) < 50
    assert separation(scores, in_scope, threshold=0.0)["auroc"] > 0.99


def test_only_mahalanobis_catches_overconfident_outliers(fitted):
    """The failure the baseline is known for: far from the data, softmax is most sure.
    Cosine knn normalises the distance away along a class direction too."""
    v = fitted.validation
    assert v["max_softmax"]["auroc"] < 0.5 and v["energy"]["auroc"] < 0.5
    assert v["knn"]["auroc"] < 0.5
    assert v["mahalanobis"]["auroc"] > 0.99


def test_the_score_with_the_best_validation_recall_is_chosen(fitted):
    assert fitted.chosen == "mahalanobis"
    assert fitted.validation["mahalanobis"]["recall"] == 1.0
    assert "highest out-of-scope recall at 5% in-scope rejection" in fitted.reason
    assert "max_softmax 0.000/" in fitted.reason


def test_each_threshold_rejects_the_spec_share_of_in_scope_validation(fitted):
    for name, values in fitted.validation.items():
        assert values["in_scope_rejection"] <= 0.05, name
        assert values["in_scope_rejection"] > 0.04, name  # and not far fewer: 300 inputs


def test_threshold_at_rejects_at_most_the_rate():
    scores = np.arange(100.0)
    threshold = threshold_at(scores, 0.05)
    assert threshold == 94.0 and (scores > threshold).sum() == 5
    # Ties at the threshold stay in scope: never more than the rate.
    assert (np.ones(50) > threshold_at(np.ones(50), 0.1)).sum() == 0


def test_without_out_of_scope_validation_rows_the_spec_default_is_used():
    train, labels = clusters(40, seed=0)
    val, in_scope = validation(off_manifold(5, seed=2))
    detector = fit_detector(
        train,
        labels,
        validation_logits=logits_of(val),
        validation_features=val,
        validation_in_scope=in_scope,
        spec=EvaluationSpec(out_of_scope_default_score="knn"),
    )
    assert detector.chosen == "knn"
    assert "evaluation.out_of_scope_default_score" in detector.reason


@pytest.mark.parametrize("chosen", ["max_softmax", "energy", "mahalanobis", "knn"])
def test_a_saved_detector_scores_and_thresholds_as_the_fitted_one(fitted, tmp_path, chosen):
    fitted_as = OutOfScopeDetector(
        scorers=fitted.scorers,
        thresholds=fitted.thresholds,
        chosen=chosen,
        rejection_rate=0.05,
        reason="test",
    )
    path = fitted_as.save(tmp_path)
    assert path.name == OUT_OF_SCOPE_FILE
    loaded = load_detector(tmp_path)
    assert list(loaded.scorers) == [chosen]
    assert loaded.threshold == fitted_as.threshold
    points = np.concatenate([clusters(5, seed=9)[0], off_manifold(5, seed=9)])
    np.testing.assert_allclose(
        loaded.score(logits_of(points), points), fitted_as.score(logits_of(points), points)
    )


def test_a_version_without_a_saved_detector_loads_none(tmp_path):
    assert load_detector(tmp_path) is None


def test_report_counts_out_of_scope_inputs_let_through_as_unsupported(fitted):
    val, in_scope = validation(np.concatenate([off_manifold(30, 5), clusters(2, 6)[0][:10]]))
    records = pd.DataFrame(
        {f"{OUT_OF_SCOPE_SCORE}.{n}": v for n, v in fitted.scores(logits_of(val), val).items()}
    )
    metrics, section = out_of_scope_report(records, in_scope, fitted)
    # 10 of the 40 out-of-scope inputs sit inside the clusters: flagged no more often than
    # in-scope inputs (one is, seeded); the 30 off the clusters all are.
    assert metrics["out_of_scope_recall"] == pytest.approx(31 / 40)
    assert metrics["unsupported_assertion_rate"] == pytest.approx(9 / 40)
    assert set(section["test"]) == {"max_softmax", "energy", "mahalanobis", "knn"}
    assert metrics[f"out_of_scope_auroc.{fitted.chosen}"] == metrics["out_of_scope_auroc"]


def test_monitoring_flags_by_the_chosen_score_or_the_servers_verdict(fitted):
    reference = pd.DataFrame(
        {"label": ["a"] * 8 + ["out_of_scope"] * 2, OUT_OF_SCOPE_SCORE: np.arange(10.0)}
    )
    summary = {"out_of_scope_label": "out_of_scope", "out_of_scope": {"threshold": 6.5}}
    detector = UnsupportedAssertionDetector.from_summary(reference, summary, 0.95)
    assert detector.reference_rate == pytest.approx(0.3)
    window = pd.DataFrame({OUT_OF_SCOPE_SCORE: [1.0, 7.0, 20.0]})
    assert detector.flags(window).tolist() == [False, True, True]
    logged = pd.DataFrame({"unsupported": [True, False]})  # the inference log: no scores
    assert detector.flags(logged).tolist() == [True, False]
    with pytest.raises(ValueError, match="neither 'out_of_scope_score' nor 'unsupported'"):
        detector.flags(pd.DataFrame({"confidence": [0.9]}))
    # With labels (the gate): out-of-scope inputs the score let through, nothing else.
    labelled = pd.DataFrame(
        {"label": ["a", "a", "out_of_scope", "out_of_scope"], OUT_OF_SCOPE_SCORE: [1, 9, 1, 9]}
    )
    assert detector.labelled_flags(labelled, ("a",)).tolist() == [False, False, True, False]


@pytest.fixture(scope="module")
def tiny_version(tokenizer, tmp_path_factory):
    """A tiny random classifier with a reference profile and a fitted knn detector on disk,
    as `load_version` would hand it to serving."""
    torch.manual_seed(0)
    names = ("a", "b")
    model = build_classifier(ModelSpec(config_overrides=TINY_BERT), names).eval()
    texts = [f"please help with order {i} today" for i in range(30)] + [
        "zzz qqq xxx",
        "🙂🙂🙂",
        "ein ganz anderer Satz auf Deutsch",
    ]
    from attnops.models.batching import encode
    from attnops.models.inference import predict

    pred = predict(
        model, encode(tokenizer, texts, 32), pad_id=tokenizer.pad_token_id,
        device=torch.device("cpu"), with_embeddings=True,
    )  # fmt: skip
    in_scope = np.arange(len(texts)) < 30
    detector = fit_detector(
        pred.features[:20],
        np.arange(20) % 2,
        validation_logits=pred.logits[20:],
        validation_features=pred.features[20:],
        validation_in_scope=in_scope[20:],
        spec=EvaluationSpec(out_of_scope_scores=("knn",), out_of_scope_default_score="knn",
                            out_of_scope_knn_k=3, in_scope_rejection_rate=0.2),
    )  # fmt: skip
    folder = tmp_path_factory.mktemp("version")
    reference_dir = folder / REFERENCE_FOLDER
    reference_dir.mkdir()
    projection = EmbeddingProjection.fit(pred.embeddings, 4)
    records = score_records(
        model, tokenizer, texts, label_names=names, max_length=32, projection=projection,
        device=torch.device("cpu"), out_of_scope=detector,
    )  # fmt: skip
    records["label"] = np.where(in_scope, "a", "out_of_scope")
    records.to_parquet(reference_dir / "reference_profile.parquet")
    write_profile_summary(
        reference_dir,
        projection=projection,
        summary={
            "max_length": 32,
            "out_of_scope_label": "out_of_scope",
            "out_of_scope": detector.summary(),
        },
    )
    detector.save(reference_dir)
    loaded = LoadedVersion(
        name="tiny", version="1", run_id="r", model=model, tokenizer=tokenizer, folder=folder,
        tags={f"{TAG}labels": json.dumps(names), f"{TAG}tokenizer_sha256": "0" * 64},
    )  # fmt: skip
    return loaded, detector, texts, pred


def test_records_carry_the_detectors_chosen_score(tiny_version):
    loaded, detector, _, pred = tiny_version
    records = loaded.reference_records()
    expected = detector.score(pred.logits, pred.features)
    np.testing.assert_allclose(records[OUT_OF_SCOPE_SCORE], expected, rtol=1e-4, atol=1e-5)
    assert f"{OUT_OF_SCOPE_SCORE}.knn" not in records  # one score held: one column


def test_served_answers_are_flagged_by_the_versions_stored_score(tiny_version):
    loaded, detector, texts, pred = tiny_version
    slot = ModelSlot(
        loaded, device=torch.device("cpu"), attention_share=0.0,
        unsupported_distance_quantile=0.95, forward_batch_size=ServingSpec().forward_batch_size,
    )  # fmt: skip
    answers = slot.answer(texts)
    expected = detector.score(pred.logits, pred.features) > detector.threshold
    assert expected.any() and not expected.all()
    assert [a.unsupported for a in answers] == expected.tolist()


def test_features_are_what_the_output_layer_reads(tiny_version):
    """The output layer applied to the captured features gives the logits back."""
    loaded, _, _, pred = tiny_version
    with torch.no_grad():
        logits = loaded.model.classifier(torch.from_numpy(pred.features)).numpy()
    np.testing.assert_allclose(logits, pred.logits, rtol=1e-4, atol=1e-5)
