"""Human-facing Evidently reports (HTML) with a flat, JSON-able summary for MLflow.

attnops gates on its own calibrated statistics; these reports show a person *what* drifted or
changed. Both take record frames (one row per model input) and write the HTML atomically.
"""

from __future__ import annotations

import html
import math
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

# 0.7.23 reads only DO_NOT_TRACK (UI and collector telemetry); the first is for other versions.
os.environ.setdefault("EVIDENTLY_DISABLE_TELEMETRY", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")

import numpy as np
import pandas as pd
import scipy.stats
from evidently import (
    BinaryClassification,
    DataDefinition,
    Dataset,
    MulticlassClassification,
    Report,
)
from evidently.core.report import Snapshot
from evidently.legacy.calculations.stattests.registry import StatTest, register_stattest
from evidently.legacy.core import ColumnType
from evidently.legacy.metrics.data_drift import embeddings_drift as _legacy_embeddings
from evidently.metrics import EmbeddingsDrift
from evidently.metrics.embeddings import ModelDriftMethod
from evidently.presets import ClassificationPreset, DataDriftPreset, ValueStats
from evidently.tests import Reference, gte, lte
from threadpoolctl import threadpool_limits

from attnops.models.attention_columns import entropy_head

NUMERIC_FEATURES = (
    "text_chars", "n_tokens", "unk_rate", "tokens_per_word", "non_letter_share", "confidence",
)  # fmt: skip
CATEGORICAL_FEATURES = ("prediction", "label", "truncated")
EMBEDDING = "embedding"
_ENTROPY_LAYER = "attention_entropy_layer"
_MIN_ROWS = 5  # non-null rows per side below which a column's drift test means nothing
# Every ValueStats test off: include_tests=False breaks its HTML rendering in 0.7.23 (KeyError).
_NO_VALUE_STATS_TESTS = {f"{name}_tests": [] for name in (
    "row_count", "missing_values_count", "min", "max", "mean", "std", "q25", "q50", "q75",
)} | {"unique_values_count_tests": {}}  # fmt: skip
_QUALITY = {"Accuracy": "accuracy", "Precision": "precision", "Recall": "recall", "F1Score": "f1"}


def drift_report(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    out_html: Path,
    *,
    title: str,
    max_rows: int = 5000,
    seed: int = 0,
    slice_columns: Sequence[str] = ("channel",),
    tsne_rows: int = 500,
) -> dict:
    """Data drift of a current record frame against the reference, as an Evidently report.

    Columns are tested one by one: up to 1000 rows with p-values (K-S, two-sample chi-square),
    above with Evidently's distances (Wasserstein, Jensen-Shannon). Text and embeddings get a
    reference-vs-current classifier, drifted when its ROC AUC exceeds
    `domain_classifier_threshold`. Attention entropy becomes one mean per layer over its
    heads (`attention_entropy_layer{i}`). Columns with < 5 values on either side are left out.

    Args:
        reference: Record frame to compare against: the version's reference profile (its
            test split), or the champion's records on the same inputs or traffic.
        current: Record frame of the monitored window.
        out_html: Where the report goes; written only when the report succeeded.
        title: Shown at the top of the HTML.
        max_rows: Each side is sampled down (seeded) to this many rows.
        seed: Seed of the row sampling.
        slice_columns: Categorical slice columns to include where present.
        tsne_rows: Rows per side in the embeddings' t-SNE plot, the slow part (~10 s at 500
            on 2 busy cores); the drift score uses all sampled rows. 0 leaves embeddings out.

    Returns:
        Flat summary: `drifted_columns`, `drifted_share`, `drift.<column>.{method,threshold,
        score,detected}` plus `.p_value` for p-value tests (`drift.embedding.*` likewise, not
        counted in `drifted_columns`), `tests_{total,passed,failed}`, `failed_tests` (names),
        `rows_reference`, `rows_current`, `seconds`.

    Raises:
        ValueError: A frame is empty or lacks `prediction` or `confidence`.
    """
    start = time.perf_counter()
    _require({"reference": reference, "current": current}, ("prediction", "confidence"))
    ref, cur = (
        _drift_frame(f.sample(n=min(len(f), max_rows), random_state=seed), slice_columns)
        for f in (reference, current)
    )
    both = [c for c in ref.columns if c in cur and min(ref[c].count(), cur[c].count()) >= _MIN_ROWS]
    embedding = [c for c in both if c.startswith(f"{EMBEDDING}_")] if tsne_rows > 0 else []
    if embedding and embedding != [c for c in cur.columns if c.startswith(f"{EMBEDDING}_")]:
        raise ValueError("reference and current embeddings have different dimensions")
    numeric = [c for c in both if c in NUMERIC_FEATURES or c.startswith(_ENTROPY_LAYER)]
    categorical = [c for c in both if c in (*CATEGORICAL_FEATURES, *slice_columns)]
    text = [c for c in both if c == "text"]
    roc_auc_threshold = domain_classifier_threshold(len(ref), len(cur))
    metrics: list = [
        DataDriftPreset(
            columns=numeric + categorical + text,
            # Above 1000 rows Evidently switches to distances, which do not grow with n.
            cat_method=CHI2_TWO_SAMPLE.name if len(ref) <= 1000 else None,
            text_method="abs_text_content_drift",
            text_threshold=roc_auc_threshold,
        ),
        # Side-by-side statistics; their tests ("equal to reference +-10%") restate drift.
        *(
            ValueStats(column=c, **_NO_VALUE_STATS_TESTS)
            for c in ("prediction", "confidence", "n_tokens")
            if c in both
        ),
    ]
    if embedding:
        method = ModelDriftMethod(threshold=roc_auc_threshold, bootstrap=False)
        metrics.append(
            EmbeddingsDrift(
                embeddings_name=EMBEDDING, drift_method=method, tests=[lte(roc_auc_threshold)]
            )
        )
    embeddings = {EMBEDDING: embedding} if embedding else None
    definition = _definition(numeric, categorical, text, embeddings=embeddings)
    columns = numeric + categorical + text + embedding
    with _bounded_tsne(tsne_rows):
        snapshot = Report(metrics, metadata={"title": title}, include_tests=True).run(
            *(Dataset.from_pandas(f[columns], data_definition=definition) for f in (cur, ref))
        )
    summary = _drift_summary(snapshot, roc_auc_threshold)
    _write_html(snapshot, out_html, title)
    seconds = round(time.perf_counter() - start, 3)
    return summary | {"rows_reference": len(ref), "rows_current": len(cur), "seconds": seconds}


def classification_report(
    reference: pd.DataFrame | None,
    current: pd.DataFrame,
    out_html: Path,
    *,
    labels: Sequence[str],
    title: str,
    non_inferiority_margin: float,
) -> dict:
    """Classification quality of a candidate (current) next to the champion (reference).

    Both frames hold predictions on the same labelled test set. With a champion the tests
    are non-inferiority checks (candidate >= champion - `non_inferiority_margin`), not
    Evidently's "equal within 20%", which fails a candidate for being better. Without one,
    Evidently tests the candidate against a constant-prediction baseline.

    Args:
        reference: Champion predictions (`label`, `prediction`), or None when there is none.
        current: Candidate predictions (`label`, `prediction`, optionally `confidence`).
        out_html: Where the report goes; written only when the report succeeded.
        labels: Every `label` and `prediction` must be in it: both versions' label sets
            when they differ (a champion may answer with a class the candidate lacks).
        title: Shown at the top of the HTML.
        non_inferiority_margin: How much (absolute) each score may trail the champion's:
            the gate's `gate.non_inferiority_margin`, so the report and the gate agree.

    Returns:
        Flat summary: `{accuracy,precision,recall,f1}_{current,reference}` (macro averages over
        the labels that occur; None without a champion), `f1_{current,reference}.<label>`
        (None where a label does not occur), `tests_{total,passed,failed}`, `failed_tests`,
        `rows_current`, `seconds`.

    Raises:
        ValueError: A frame is empty, lacks `label` or `prediction`, or has a value not in
            `labels`.
    """
    start = time.perf_counter()
    frames = {"current": current} | ({} if reference is None else {"reference": reference})
    _require(frames, ("label", "prediction"))
    for side, frame in frames.items():
        for column in ("label", "prediction"):
            if unknown := sorted(set(frame[column].astype(str)) - set(labels)):
                raise ValueError(f"{side} column '{column}' has values not in labels: {unknown}")
    task, title = _classification_task(frames, title)
    numeric = ["confidence"] if all("confidence" in f for f in frames.values()) else []
    definition = _definition(numeric, ["label", "prediction"], [], classification=[task])
    data = {
        side: Dataset.from_pandas(
            f[["label", "prediction", *numeric]].astype({"label": str, "prediction": str}),
            data_definition=definition,
        )
        for side, f in frames.items()
    }
    higher = lower = None  # without a champion: Evidently's constant-prediction baseline
    if "reference" in frames:
        higher = [gte(Reference(absolute=non_inferiority_margin))]
        lower = [lte(Reference(absolute=non_inferiority_margin))]
    metrics: list = [
        ClassificationPreset(
            accuracy_tests=higher,
            precision_tests=higher,
            recall_tests=higher,
            f1score_tests=higher,
            # A binary task's rates: the positive class found, the negative kept; error rates.
            tpr_tests=higher,
            tnr_tests=higher,
            fpr_tests=lower,
            fnr_tests=lower,
        ),
        *(ValueStats(column=c, **_NO_VALUE_STATS_TESTS) for c in numeric),
    ]
    report = Report(metrics, metadata={"title": title}, include_tests=True)
    snapshot = report.run(data["current"], data.get("reference"))
    summary: dict = {}
    for side in ("current", "reference"):
        values = _quality_values(snapshot, reference=side == "reference")
        summary |= {f"{name}_{side}": values.get(kind) for kind, name in _QUALITY.items()}
        by_label = values.get("F1ByLabel") or {}
        summary |= {f"f1_{side}.{label}": by_label.get(label) for label in sorted(labels)}
    _write_html(snapshot, out_html, title)
    seconds = round(time.perf_counter() - start, 3)
    return summary | _tests_summary(snapshot) | {"rows_current": len(current), "seconds": seconds}


def _classification_task(
    frames: dict[str, pd.DataFrame], title: str
) -> tuple[BinaryClassification | MulticlassClassification, str]:
    """Evidently's task for these frames, and the title; drops a champion it cannot compare.

    Evidently reads a side whose answers and labels hold two values as a binary task (and
    fails unless told which is positive: here the later one, "1" or "pos"), and cannot set
    such a side beside one with other values, nor a multiclass side beside one with two. The
    report is evidence for a reviewer, not the verdict: the candidate's side is kept and the
    title says why the champion's is not.
    """
    present = {
        side: set(frame["label"].astype(str)) | set(frame["prediction"].astype(str))
        for side, frame in frames.items()
    }
    current = len(present["current"])
    # A binary side is only comparable with the same two classes (its rates are per class).
    comparable = (
        present.get("reference") == present["current"]
        if current == 2
        else len(present.get("reference", ())) >= 3
    )
    if "reference" in frames and not comparable:
        title += (
            f" (champion left out: its answers and labels hold {len(present['reference'])} "
            f"classes here, the candidate's {current})"
        )
        del frames["reference"]
    if current == 2:
        positive = sorted(present["current"])[-1]
        return BinaryClassification(
            target="label", prediction_labels="prediction", pos_label=positive
        ), title
    return MulticlassClassification(target="label", prediction_labels="prediction"), title


def domain_classifier_threshold(n_reference: int, n_current: int) -> float:
    """ROC AUC above which a reference-vs-current classifier signals drift.

    Evidently scores the classifier on a random half of the pooled rows. Without drift its
    ROC AUC is a Mann-Whitney U / (n1 n2): mean 0.5, sd sqrt((n1 + n2 + 1) / (12 n1 n2)).
    Its one-sided 95% point replaces Evidently's 1000-fold bootstrap of the same quantity
    (the slowest part of the report, run three times) and its fixed 0.55, which false-alarms
    at small n; 0.55 stays as a floor so thousands of rows don't flag negligible shifts.
    """
    n1, n2 = n_reference / 2, n_current / 2
    return max(0.55, 0.5 + 1.645 * math.sqrt((n1 + n2 + 1) / (12 * n1 * n2)))


def _chi2_two_sample(
    reference: pd.Series, current: pd.Series, feature_type: ColumnType, threshold: float
) -> tuple[float, bool]:
    """Chi-square test of homogeneity on the 2 x categories table of counts.

    Evidently's "chisquare" takes the reference counts as exact expected frequencies (and a
    category absent from the reference as infinite evidence), so two samples of one
    20-class distribution "drift" at a few hundred rows.
    """
    table = pd.concat([reference.value_counts(), current.value_counts()], axis=1).fillna(0)
    if len(table) < 2:
        return 1.0, False
    p_value = float(scipy.stats.chi2_contingency(table.to_numpy().T, correction=False).pvalue)
    return p_value, p_value < threshold


CHI2_TWO_SAMPLE = StatTest(
    name="chi2_two_sample_p_value",
    display_name="chi-square two-sample p_value",
    allowed_feature_types=[ColumnType.Categorical],
)
register_stattest(CHI2_TWO_SAMPLE, _chi2_two_sample)


def _require(frames: Mapping[str, pd.DataFrame], columns: Sequence[str]) -> None:
    for side, frame in frames.items():
        if missing := [c for c in columns if c not in frame.columns]:
            raise ValueError(
                f"column '{missing[0]}' not found in the {side} frame "
                f"(columns: {', '.join(map(str, frame.columns))})"
            )
        if frame.empty:
            raise ValueError(f"the {side} frame has no rows")


def _definition(numeric: list, categorical: list, text: list, **kwargs) -> DataDefinition:
    """Column types stated in full: Evidently infers nothing (nor guesses embeddings)."""
    return DataDefinition(
        numerical_columns=numeric,
        categorical_columns=categorical,
        text_columns=text,
        datetime_columns=[],
        unknown_columns=[],
        list_columns=[],
        **kwargs,
    )


def _drift_frame(frame: pd.DataFrame, slice_columns: Sequence[str]) -> pd.DataFrame:
    """The columns the drift report reads, in the types it needs."""
    heads: dict[int, list[str]] = {}
    for column in frame.columns:
        if head := entropy_head(column):
            heads.setdefault(head[0], []).append(column)
    categorical = [c for c in dict.fromkeys((*CATEGORICAL_FEATURES, *slice_columns)) if c in frame]
    parts = [
        frame[[c for c in NUMERIC_FEATURES if c in frame]].astype(float),
        pd.DataFrame(
            {f"{_ENTROPY_LAYER}{i}": frame[c].astype(float).mean(axis=1) for i, c in heads.items()},
            index=frame.index,
        ),
        frame[categorical].map(lambda v: v if pd.isna(v) else str(v)),  # bools as categories
        frame[[c for c in ("text",) if c in frame]].fillna("").astype(str),
    ]
    if EMBEDDING in frame:
        vectors = np.stack([np.asarray(v, dtype=np.float32) for v in frame[EMBEDDING]])
        columns = [f"{EMBEDDING}_{i}" for i in range(vectors.shape[1])]
        parts.append(pd.DataFrame(vectors, columns=columns, index=frame.index))
    return pd.concat(parts, axis=1)


@contextmanager
def _bounded_tsne(rows: int) -> Iterator[None]:
    """Caps EmbeddingsDrift's t-SNE plot sample (a module constant, 2500 per side in 0.7.23).

    Also one OpenMP thread: on a shared 2-core box t-SNE's default threads contended and
    took 3x longer (44 s vs 15 s for a 500-row report).
    """
    rows_before = _legacy_embeddings.SAMPLE_CONSTANT
    _legacy_embeddings.SAMPLE_CONSTANT = max(rows, 1)
    try:
        with threadpool_limits(limits=1, user_api="openmp"):
            yield
    finally:
        _legacy_embeddings.SAMPLE_CONSTANT = rows_before


def _quality_values(snapshot: Snapshot, *, reference: bool) -> dict:
    """Classification metric type name -> value, for the current or the reference side."""
    values: dict = {}
    if reference and not snapshot.context.has_reference:
        return values
    for item in snapshot.dict()["metrics"]:
        kind = item["config"]["type"].rsplit(":", 1)[-1]
        if kind in _QUALITY or kind == "F1ByLabel":
            context = snapshot.context
            value = (
                context.get_reference_metric_result(item["id"]).to_simple_dict()
                if reference
                else item["value"]
            )
            values[kind] = (
                {str(k): float(v) for k, v in value.items()}
                if isinstance(value, dict)
                else float(value)
            )
    return values


def _drift_summary(snapshot: Snapshot, roc_auc_threshold: float) -> dict:
    result = snapshot.dict()
    status = {t["metric_config"]["metric_id"]: t["status"] for t in result["tests"]}
    summary: dict = {}
    for item in result["metrics"]:
        config, value = item["config"], item["value"]
        kind = config["type"].rsplit(":", 1)[-1]
        if kind == "DriftedColumnsCount":
            summary["drifted_columns"] = int(value["count"])
            summary["drifted_share"] = float(value["share"])
        elif kind in ("ValueDrift", "EmbeddingsDrift"):
            key = f"drift.{config.get('column', EMBEDDING)}"
            method = config.get("method", "domain classifier ROC AUC")
            summary |= {
                f"{key}.method": method,
                f"{key}.threshold": config.get("threshold", roc_auc_threshold),
                f"{key}.score": float(value),
                f"{key}.detected": status.get(item["id"]) == "FAIL",
            }
            if method.endswith("p_value"):
                summary[f"{key}.p_value"] = float(value)
    return summary | _tests_summary(snapshot)


def _tests_summary(snapshot: Snapshot) -> dict:
    tests = snapshot.dict()["tests"]
    failed = [t["name"] for t in tests if t["status"] in ("FAIL", "ERROR")]
    passed = sum(t["status"] == "SUCCESS" for t in tests)
    return {
        "tests_total": len(tests),
        "tests_passed": passed,
        "tests_failed": len(failed),
        "failed_tests": failed,
    }


def _write_html(snapshot: Snapshot, out_html: Path, title: str) -> None:
    """Writes a temp file next to `out_html`, then renames it into place."""
    out_html = Path(out_html)
    out_html.parent.mkdir(parents=True, exist_ok=True)
    heading = html.escape(title)
    page = snapshot.get_html_str(as_iframe=False)  # what save_html(str) writes; a Path: nothing
    page = page.replace("<head>", f"<head><title>{heading}</title>", 1)
    page = page.replace("<body>", f'<body><h1 style="font-family:sans-serif">{heading}</h1>', 1)
    tmp = out_html.with_name(f".{out_html.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(page, encoding="utf-8")
        os.replace(tmp, out_html)
    finally:
        tmp.unlink(missing_ok=True)
