"""Evaluate a fine-tuned classifier and write its evidence (metrics, plots, reference profile)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from attnops.models import plots, report_json
from attnops.models.attention import AttentionReport
from attnops.models.data import LABEL, TEXT, LabelledData
from attnops.models.evaluate_steps import (
    EvalContext,
    TestScores,
    attention_probe,
    baseline_metrics,
    fit_on_validation,
    score_in_scope_test,
    score_test_split,
    token_stats,
)
from attnops.models.ood import OutOfScopeDetector, out_of_scope_report
from attnops.models.performance import measure_performance
from attnops.models.profile import EmbeddingProjection, write_profile_summary
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
    ctx = EvalContext(model, tokenizer, data, spec, device)
    detector, projection = fit_on_validation(ctx)
    reference = score_test_split(ctx, detector, projection)
    test = score_in_scope_test(ctx, reference)
    oos = ctx.encode(data.out_of_scope("test"), labelled=False)
    hallucination, out_of_scope = out_of_scope_report(reference, test.in_scope, detector)
    tokens = token_stats(test.inputs, oos)
    performance = measure_performance(
        model,
        test.inputs,
        pad_id=ctx.pad_id,
        device=device,
        latency_samples=spec.evaluation.latency_samples,
        throughput_batch_size=spec.evaluation.throughput_batch_size,
        bf16_on_cpu=spec.serving.bf16,
    )
    baseline = baseline_metrics(ctx, test) if spec.evaluation.baseline else {}
    attention, probe_size = attention_probe(ctx)

    metrics = _metrics(test, hallucination, tokens, performance, baseline, attention)
    # Texts the tokenizer reads as unknown tokens only (emoji, an unseen script): one input.
    metrics["unknown_only_share"] = float((reference["unk_rate"] >= 1.0).mean())
    report = _report(metrics, test, out_of_scope, attention, probe_size, data.label_names)
    files = _write_plots(out_dir, test, attention, data.label_names)
    if fit:
        report["fit"] = fit
        metrics["train_accuracy_sample"] = float(fit["train_accuracy"])
        metrics["underfit"] = float(fit["diagnosis"] == "underfit")
    files.append(out_dir / EVALUATION_JSON)
    files[-1].write_text(report_json.dumps(report))
    files.append(_write_test_predictions(out_dir, test, data.label_names))
    _add_inputs(reference, data.splits["test"], spec.data.slice_columns)
    files.append(_write_profile(out_dir, projection, detector, attention, data, spec))
    files.append(detector.save(out_dir))  # the chosen score, fitted: serving loads it
    return Evaluation(metrics=metrics, report=report, files=files, reference=reference)


def _metrics(
    test: TestScores,
    hallucination: dict[str, float],
    tokens: dict[str, float],
    performance: dict[str, float],
    baseline: dict[str, float],
    attention: AttentionReport,
) -> dict[str, float]:
    """The flat scalars logged to MLflow."""
    quality = test.quality
    metrics = {
        "test_accuracy": quality["accuracy"],
        "test_macro_f1": quality["macro_f1"],
        "test_ece": test.ece,
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
    return metrics


def _report(
    metrics: dict[str, float],
    test: TestScores,
    out_of_scope: dict[str, object],
    attention: AttentionReport,
    probe_size: int,
    names,
) -> dict[str, object]:
    """Everything `evaluation.json` holds (the training's `fit` joins it when given)."""
    return {
        "metrics": metrics,
        "label_names": list(names),
        "per_class": test.quality["per_class"],
        "confusion_matrix": test.quality["confusion_matrix"],
        "calibration_bins": test.bins.to_dict(orient="records"),
        "slices": test.slice_rows,
        "out_of_scope": out_of_scope,
        "attention": {
            "entropy": attention.entropy.tolist(),
            "importance": attention.importance.tolist(),
            "base_entropy": attention.base_entropy.tolist(),
            "collapsed_heads": attention.collapsed_heads,
            "collapse": attention.collapse,
            "probe_size": probe_size,
        },
    }


def _write_plots(out_dir: Path, test: TestScores, attention: AttentionReport, names) -> list[Path]:
    names_png = ("confusion_matrix", "reliability", "attention_entropy", "attention_entropy_change")
    files = [out_dir / f"{name}.png" for name in (*names_png, "head_importance")]
    plots.confusion_matrix_png(test.quality["confusion_matrix"], names, files[0])
    plots.reliability_png(test.bins, test.ece, files[1])
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
    return files


def _write_test_predictions(out_dir: Path, test: TestScores, names) -> Path:
    """Per-input results (no text: inputs may hold PII), so a reviewer or a paired test
    against another version can look beyond the averages."""
    path = out_dir / TEST_PREDICTIONS
    pd.DataFrame(
        {
            LABEL: test.frame[LABEL].to_numpy(),
            "prediction": np.asarray(names, dtype=object)[test.predicted],
            "confidence": test.confidence,
            "n_tokens": test.inputs.full_lengths,
            **{f"slice.{column}": values for column, values in test.slices.items()},
        }
    ).to_parquet(path, index=False)
    return path


def _add_inputs(reference: pd.DataFrame, full_test: pd.DataFrame, slice_columns) -> None:
    """The test rows' text, true label and slices, beside their records."""
    reference.insert(0, TEXT, full_test[TEXT].to_numpy())
    reference[LABEL] = full_test[LABEL].to_numpy()
    for col in slice_columns:
        reference[col] = full_test[col].to_numpy()


def _write_profile(
    out_dir: Path,
    projection: EmbeddingProjection,
    detector: OutOfScopeDetector,
    attention: AttentionReport,
    data: LabelledData,
    spec: PipelineSpec,
) -> Path:
    """The reference profile's summary: what monitoring compares live traffic against."""
    return write_profile_summary(
        out_dir,
        projection=projection,
        summary={
            "label_names": list(data.label_names),
            "out_of_scope_label": data.out_of_scope_label,
            "out_of_scope": detector.summary(),
            "max_length": spec.model.max_length,
            # The precision its records were scored in: the gate scores the version so again.
            "bf16_on_cpu": spec.serving.bf16,
            "attention_entropy": attention.entropy.tolist(),
            "attention_importance": attention.importance.tolist(),
            "test_sha256": data.sha256["test"],
        },
    )
