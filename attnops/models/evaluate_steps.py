"""The measurements a classifier evaluation takes, one step each (`evaluate.evaluate_classifier`
runs them in order): out-of-scope detector and embedding projection on validation, the test
split's records, in-scope quality/calibration/slices, token statistics, the TF-IDF baseline
and the attention probe."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from attnops.models.attention import AttentionReport, attention_report
from attnops.models.baseline import tfidf_baseline
from attnops.models.batching import Encoded, encode
from attnops.models.data import LABEL, TEXT, LabelledData
from attnops.models.inference import Predictions, predict
from attnops.models.metrics import (
    classification_metrics,
    expected_calibration_error,
    length_bucket,
    percentiles,
    slice_metrics,
)
from attnops.models.modeling import build_classifier
from attnops.models.ood import OutOfScopeDetector, fit_detector
from attnops.models.profile import EmbeddingProjection
from attnops.models.records import score_records
from attnops.spec import PipelineSpec


@dataclass(frozen=True)
class EvalContext:
    """What every step reads: the model, its tokenizer, the data and the spec."""

    model: object
    tokenizer: object
    data: LabelledData
    spec: PipelineSpec
    device: torch.device

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id

    def encode(self, frame: pd.DataFrame, labelled: bool = True) -> Encoded:
        labels = self.data.label_ids(frame) if labelled else None
        return encode(self.tokenizer, frame[TEXT].tolist(), self.spec.model.max_length, labels)

    def predict(self, inputs: Encoded) -> Predictions:
        return predict(
            self.model,
            inputs,
            pad_id=self.pad_id,
            device=self.device,
            with_embeddings=True,
            bf16_on_cpu=self.spec.serving.bf16,  # the reference is what the server computes
        )


@dataclass(frozen=True)
class TestScores:
    """The in-scope test rows through the model: predictions, quality, calibration, slices."""

    in_scope: np.ndarray
    """Which rows of the whole test split are in scope."""
    frame: pd.DataFrame
    inputs: Encoded
    predicted: np.ndarray
    """Predicted label ids."""
    confidence: np.ndarray
    quality: dict[str, object]
    ece: float
    bins: pd.DataFrame
    slices: dict[str, np.ndarray]
    slice_rows: list[dict[str, object]]


def fit_on_validation(ctx: EvalContext) -> tuple[OutOfScopeDetector, EmbeddingProjection]:
    """The out-of-scope detector and the embedding projection of the reference profile."""
    cfg, data = ctx.spec.evaluation, ctx.data
    val_frame = data.splits["validation"]
    val_in_scope = val_frame[LABEL].isin(data.label_names).to_numpy()
    val_pred = ctx.predict(ctx.encode(val_frame, labelled=False))
    # Out-of-scope scores: fitted on (a seeded sample of) the training split, thresholded
    # and chosen on validation, measured on test.
    fit_frame = data.splits["train"]
    if len(fit_frame) > cfg.out_of_scope_fit_rows:
        fit_frame = fit_frame.sample(
            n=cfg.out_of_scope_fit_rows, random_state=ctx.spec.training.seed
        )
    fit_pred = ctx.predict(ctx.encode(fit_frame, labelled=False))
    detector = fit_detector(
        fit_pred.features,
        np.asarray(data.label_ids(fit_frame)),
        validation_logits=val_pred.logits,
        validation_features=val_pred.features,
        validation_in_scope=val_in_scope,
        spec=cfg,
    )
    del fit_pred
    projection = EmbeddingProjection.fit(val_pred.embeddings[val_in_scope], cfg.embedding_dim)
    return detector, projection


def score_test_split(
    ctx: EvalContext, detector: OutOfScopeDetector, projection: EmbeddingProjection
) -> pd.DataFrame:
    """The reference profile: the whole test split as records through the version's eyes.

    The test split was never used to pick weights, temperature or threshold; its records hold
    in- and out-of-scope rows alike, as live traffic will. Text stays in memory here (added by
    `evaluate`); whoever stores it redacts it. The test metrics come from the same pass.
    """
    full_test, cfg = ctx.data.splits["test"], ctx.spec.evaluation
    return score_records(
        ctx.model,
        ctx.tokenizer,
        full_test[TEXT].tolist(),
        label_names=ctx.data.label_names,
        max_length=ctx.spec.model.max_length,
        projection=projection,
        device=ctx.device,
        attention_share=min(1.0, cfg.probe_size / max(len(full_test), 1)),
        seed=ctx.spec.training.seed,
        out_of_scope=detector,
        bf16_on_cpu=ctx.spec.serving.bf16,
    )


def score_in_scope_test(ctx: EvalContext, reference: pd.DataFrame) -> TestScores:
    """Quality, calibration and slice metrics of the in-scope test rows, from `reference`."""
    cfg, names = ctx.spec.evaluation, ctx.data.label_names
    in_scope = ctx.data.splits["test"][LABEL].isin(names).to_numpy()
    frame = ctx.data.in_scope("test")
    inputs = ctx.encode(frame)
    predicted = np.asarray(
        pd.Categorical(reference["prediction"][in_scope], categories=names).codes
    )
    confidence = reference["confidence"][in_scope].to_numpy()
    y_true = np.asarray(inputs.labels)
    ece, bins = expected_calibration_error(confidence, predicted == y_true, cfg.ece_bins)
    slices = {"length": length_bucket(np.asarray(inputs.full_lengths), cfg.length_buckets)}
    slices |= {col: frame[col].to_numpy() for col in ctx.spec.data.slice_columns}
    return TestScores(
        in_scope=in_scope,
        frame=frame,
        inputs=inputs,
        predicted=predicted,
        confidence=confidence,
        quality=classification_metrics(y_true, predicted, names),
        ece=ece,
        bins=bins,
        slices=slices,
        slice_rows=slice_metrics(y_true, predicted, slices),
    )


def token_stats(test: Encoded, oos: Encoded) -> dict[str, float]:
    """Tokens per input and truncation over the whole test split, in and out of scope."""
    full_lengths = np.asarray(test.full_lengths + oos.full_lengths)
    return {
        **percentiles(full_lengths, "tokens_per_input", (50, 95)),
        "tokens_per_input_max": float(full_lengths.max()),
        "truncation_rate": float(np.concatenate([test.truncated, oos.truncated]).mean()),
    }


def baseline_metrics(ctx: EvalContext, test: TestScores) -> dict[str, float]:
    train_frame = ctx.data.splits["train"]
    return tfidf_baseline(
        train_frame[TEXT], ctx.data.label_ids(train_frame), test.frame[TEXT], test.inputs.labels
    )


def attention_probe(ctx: EvalContext) -> tuple[AttentionReport, int]:
    """Per-head entropy and importance on a validation sample, against the untrained model."""
    val_labelled = ctx.data.in_scope("validation")
    size = min(ctx.spec.evaluation.probe_size, len(val_labelled))
    probe = ctx.encode(val_labelled.sample(n=size, random_state=0))
    torch.manual_seed(ctx.spec.training.seed)  # the same initial weights as before fine-tuning
    base_model = build_classifier(ctx.spec.model, ctx.data.label_names).to(ctx.device)
    attention = attention_report(
        ctx.model,
        base_model,
        probe,
        pad_id=ctx.pad_id,
        device=ctx.device,
        collapse_entropy=ctx.spec.evaluation.collapse_entropy,
    )
    return attention, len(probe)
