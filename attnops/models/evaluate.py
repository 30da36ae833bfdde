"""Evaluate a fine-tuned classifier and write its evidence (metrics, plots, reference profile)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from attnops.models import plots
from attnops.models.attention import attention_report
from attnops.models.baseline import tfidf_baseline
from attnops.models.batching import Encoded, encode
from attnops.models.data import LABEL, TEXT, LabelledData
from attnops.models.inference import predict
from attnops.models.metrics import (
    classification_metrics,
    expected_calibration_error,
    length_bucket,
    percentiles,
    slice_metrics,
)
from attnops.models.modeling import build_classifier
from attnops.models.ood import fit_detector, out_of_scope_report
from attnops.models.performance import measure_performance
from attnops.models.profile import EmbeddingProjection, write_profile_summary
from attnops.models.records import score_records
from attnops.models.threads import use_threads
from attnops.spec import PipelineSpec

EVALUATION_JSON = "evaluation.json"
TEST_PREDICTIONS = "test_predictions.parquet"
_METRIC_KEY_UNSAFE = re.compile(r"[^\w.\- ]")


@dataclass(frozen=True)
class Evaluation:
    metrics: dict[str, float]
    """Scalar metrics, flat, as logged to MLflow (test split unless the name says otherwise)."""
    report: dict[str, object]
    """Everything, including per-class, per-slice and per-head results."""
    files: list[Path]
    reference: pd.DataFrame
    """Test-split records (`models.records`), raw text included: redact before storing."""


def evaluate_classifier(
    model,
    tokenizer,
    data: LabelledData,
    spec: PipelineSpec,
    *,
    device: torch.device,
    out_dir: Path,
    fit: dict[str, object] | None = None,
) -> Evaluation:
    """Score the model on the test split and profile it on the validation split.

    Writes the PNG figures, `evaluation.json` and the reference profile into `out_dir`.
    `fit` (the training's `models.fit` diagnosis) is kept in the report as `fit`, with its
    train accuracy and an `underfit` flag (1/0) among the metrics.
    """
    use_threads(spec.training.num_threads, stage="evaluation")
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg, max_length, pad_id = spec.evaluation, spec.model.max_length, tokenizer.pad_token_id
    names = data.label_names

    def encoded(frame: pd.DataFrame, labelled: bool = True) -> Encoded:
        labels = data.label_ids(frame) if labelled else None
        return encode(tokenizer, frame[TEXT].tolist(), max_length, labels)

    val_frame = data.splits["validation"]
    val_in_scope = val_frame[LABEL].isin(names).to_numpy()
    validation = encoded(val_frame, labelled=False)
    val_pred = predict(model, validation, pad_id=pad_id, device=device, with_embeddings=True)
    # Out-of-scope scores: fitted on (a seeded sample of) the training split, thresholded
    # and chosen on validation, measured on test below.
    fit_frame = data.splits["train"]
    if len(fit_frame) > cfg.out_of_scope_fit_rows:
        fit_frame = fit_frame.sample(n=cfg.out_of_scope_fit_rows, random_state=spec.training.seed)
    fit_inputs = encoded(fit_frame, labelled=False)
    fit_pred = predict(model, fit_inputs, pad_id=pad_id, device=device, with_embeddings=True)
    detector = fit_detector(
        fit_pred.features,
        np.asarray(data.label_ids(fit_frame)),
        validation_logits=val_pred.logits,
        validation_features=val_pred.features,
        validation_in_scope=val_in_scope,
        spec=cfg,
    )
    del fit_inputs, fit_pred

    # The reference profile: the test split (never used to pick weights, temperature or
    # threshold) as records through the version's own eyes, in and out of scope alike,
    # as live traffic will be. Text stays in memory here; whoever stores it redacts it.
    # The test metrics below come from the same pass.
    projection = EmbeddingProjection.fit(val_pred.embeddings[val_in_scope], cfg.embedding_dim)
    full_test = data.splits["test"]
    reference = score_records(
        model,
        tokenizer,
        full_test[TEXT].tolist(),
        label_names=names,
        max_length=max_length,
        projection=projection,
        device=device,
        attention_share=min(1.0, cfg.probe_size / max(len(full_test), 1)),
        seed=spec.training.seed,
        out_of_scope=detector,
    )
    in_scope = full_test[LABEL].isin(names).to_numpy()
    test_frame = data.in_scope("test")
    test = encoded(test_frame)
    test_labels = np.asarray(
        pd.Categorical(reference["prediction"][in_scope], categories=names).codes
    )
    test_confidence = reference["confidence"][in_scope].to_numpy()
    y_true = np.asarray(test.labels)
    quality = classification_metrics(y_true, test_labels, names)
    ece, bins = expected_calibration_error(test_confidence, test_labels == y_true, cfg.ece_bins)
    slices = {"length": length_bucket(np.asarray(test.full_lengths), cfg.length_buckets)}
    slices |= {col: test_frame[col].to_numpy() for col in spec.data.slice_columns}
    slice_rows = slice_metrics(y_true, test_labels, slices)

    oos = encoded(data.out_of_scope("test"), labelled=False)
    hallucination, out_of_scope = out_of_scope_report(reference, in_scope, detector)

    # The whole test split (in-scope and out-of-scope), from encodings already made.
    full_lengths = np.asarray(test.full_lengths + oos.full_lengths)
    tokens = {
        **percentiles(full_lengths, "tokens_per_input", (50, 95)),
        "tokens_per_input_max": float(full_lengths.max()),
        "truncation_rate": float(np.concatenate([test.truncated, oos.truncated]).mean()),
    }
    performance = measure_performance(
        model,
        test,
        pad_id=pad_id,
        device=device,
        latency_samples=cfg.latency_samples,
        throughput_batch_size=cfg.throughput_batch_size,
    )
    baseline = {}
    if cfg.baseline:
        train_frame = data.splits["train"]
        baseline = tfidf_baseline(
            train_frame[TEXT], data.label_ids(train_frame), test_frame[TEXT], test.labels
        )

    val_labelled = data.in_scope("validation")
    probe_frame = val_labelled.sample(n=min(cfg.probe_size, len(val_labelled)), random_state=0)
    probe = encoded(probe_frame)
    torch.manual_seed(spec.training.seed)  # the same initial weights as before fine-tuning
    base_model = build_classifier(spec.model, names).to(device)
    attention = attention_report(
        model,
        base_model,
        probe,
        pad_id=pad_id,
        device=device,
        collapse_entropy=cfg.collapse_entropy,
    )
    del base_model

    metrics = {
        "test_accuracy": quality["accuracy"],
        "test_macro_f1": quality["macro_f1"],
        "test_ece": ece,
        **hallucination,
        **tokens,
        **performance,
        **baseline,
        "attention_entropy_mean": float(attention.entropy.mean()),
        "attention_entropy_min": float(attention.entropy.min()),
        "attention_collapsed_heads": float(len(attention.collapsed_heads)),
    }
    if baseline:
        metrics["macro_f1_gain_over_baseline"] = quality["macro_f1"] - baseline["baseline_macro_f1"]
    for name, scores in quality["per_class"].items():
        # MLflow metric keys allow only [/\w.\- :]; the exact names stay in evaluation.json.
        metrics["test_f1." + _METRIC_KEY_UNSAFE.sub("_", name)[:200]] = scores["f1"]
    report = {
        "metrics": metrics,
        "label_names": list(names),
        "per_class": quality["per_class"],
        "confusion_matrix": quality["confusion_matrix"],
        "calibration_bins": bins.to_dict(orient="records"),
        "slices": slice_rows,
        "out_of_scope": out_of_scope,
        "attention": {
            "entropy": attention.entropy.tolist(),
            "importance": attention.importance.tolist(),
            "base_entropy": attention.base_entropy.tolist(),
            "collapsed_heads": attention.collapsed_heads,
            "collapse": attention.collapse,
            "probe_size": len(probe),
        },
    }
    names_png = ("confusion_matrix", "reliability", "attention_entropy", "attention_entropy_change")
    files = [out_dir / f"{name}.png" for name in (*names_png, "head_importance")]
    plots.confusion_matrix_png(quality["confusion_matrix"], names, files[0])
    plots.reliability_png(bins, ece, files[1])
    plots.head_matrix_png(
        attention.entropy, "Attention entropy (normalised)", files[2], vmin=0, vmax=1
    )
    plots.head_matrix_png(
        attention.entropy - attention.base_entropy,
        "Attention entropy change during fine-tuning",
        files[3],
        cmap="RdBu",
        vmin=-1,
        vmax=1,
    )
    plots.head_matrix_png(
        attention.importance, "Head importance (per-layer L2-normalised)", files[4]
    )
    if fit:
        report["fit"] = fit
        metrics["train_accuracy_sample"] = float(fit["train_accuracy"])
        metrics["underfit"] = float(fit["diagnosis"] == "underfit")
    files.append(out_dir / EVALUATION_JSON)
    files[-1].write_text(json.dumps(report, indent=2))
    # Per-input results (no text: inputs may hold PII), so a reviewer or a paired test
    # against another version can look beyond the averages.
    files.append(out_dir / TEST_PREDICTIONS)
    pd.DataFrame(
        {
            LABEL: test_frame[LABEL].to_numpy(),
            "prediction": np.asarray(names, dtype=object)[test_labels],
            "confidence": test_confidence,
            "n_tokens": test.full_lengths,
            **{f"slice.{column}": values for column, values in slices.items()},
        }
    ).to_parquet(files[-1], index=False)

    reference.insert(0, TEXT, full_test[TEXT].to_numpy())
    reference[LABEL] = full_test[LABEL].to_numpy()
    for col in spec.data.slice_columns:
        reference[col] = full_test[col].to_numpy()
    files.append(
        write_profile_summary(
            out_dir,
            projection=projection,
            summary={
                "label_names": list(names),
                "out_of_scope_label": data.out_of_scope_label,
                "out_of_scope": detector.summary(),
                "max_length": max_length,
                "attention_entropy": attention.entropy.tolist(),
                "attention_importance": attention.importance.tolist(),
                "test_sha256": data.sha256["test"],
            },
        )
    )
    files.append(detector.save(out_dir))  # the chosen score, fitted: serving loads it
    return Evaluation(metrics=metrics, report=report, files=files, reference=reference)
