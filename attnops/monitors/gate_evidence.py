"""Gather a version's gate evidence: score it on the test split now, on this machine.

The candidate and the champion (and the TF-IDF baseline) are scored on the same inputs in
the same run, so the paired test compares like with like, and timed request by request in
turn, so latency ratios are not skewed by another machine, another day or a busy minute.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch

from attnops.models.baseline import fit_tfidf_baseline
from attnops.models.batching import encode
from attnops.models.data import LABEL, TEXT
from attnops.models.metrics import length_bucket
from attnops.models.ood import load_detector
from attnops.models.performance import model_size_mb, time_side_by_side
from attnops.models.records import score_records
from attnops.models.threads import use_threads
from attnops.models.versions import REFERENCE_FOLDER, LoadedVersion
from attnops.monitors import pii
from attnops.monitors.checks import VersionEvidence
from attnops.monitors.hallucination import UnsupportedAssertionDetector
from attnops.spec import PipelineSpec


def gather_evidence(
    loaded: LoadedVersion,
    test: pd.DataFrame,
    spec: PipelineSpec,
    *,
    device: torch.device,
    artifact_texts: dict[str, list[str]] | None = None,
) -> tuple[VersionEvidence, pd.DataFrame]:
    """Score `loaded` on the `test` split; return its gate evidence and its test records.

    Args:
        test: the spec's test split (`text`, `label` and the slice columns), in and out of
            scope alike.
        artifact_texts: the version's human-readable artifacts (model card, input example)
            by name, checked for PII together with the stored reference profile.
    """
    use_threads(spec.training.num_threads, stage="gate")
    records = score_inputs(loaded, test, spec, device=device)
    evidence = VersionEvidence(
        version=loaded.version,
        predictions=records,
        performance={},  # measured for all versions together: `measure_side_by_side`
        attention=loaded.evaluation()["attention"],
        tokenizer_sha256=loaded.tokenizer_sha256,
        label_names=loaded.label_names,
        pii_findings=pii_findings_in(artifact_texts or {}, loaded.reference_records()),
    )
    return evidence, records


def score_inputs(
    loaded: LoadedVersion, inputs: pd.DataFrame, spec: PipelineSpec, *, device: torch.device
) -> pd.DataFrame:
    """Records of `loaded` on labelled `inputs`: its answers, `label`, `unsupported`, the
    token-length bucket and whichever of the spec's slice columns `inputs` has."""
    model = loaded.model.to(device)
    summary, projection = loaded.profile_summary()
    records = score_records(
        model,
        loaded.tokenizer,
        inputs[TEXT].tolist(),
        label_names=loaded.label_names,
        max_length=int(summary["max_length"]),
        projection=projection,
        device=device,
        attention_share=spec.monitoring.attention_sample_share,
        seed=spec.training.seed,
        out_of_scope=load_detector(loaded.folder / REFERENCE_FOLDER),
        # As its reference was scored (fp32 for versions evaluated before that was recorded).
        bf16_on_cpu=bool(summary.get("bf16_on_cpu", False)),
    )
    detector = UnsupportedAssertionDetector.from_summary(
        loaded.reference_records(), summary, spec.monitoring.unsupported_distance_quantile
    )
    records[LABEL] = inputs[LABEL].to_numpy()
    records["unsupported"] = detector.labelled_flags(records, loaded.label_names)
    records["length"] = length_bucket(
        records["n_tokens"].to_numpy(), spec.evaluation.length_buckets
    )
    for column in spec.data.slice_columns:
        if column in inputs:
            records[column] = inputs[column].to_numpy()
    return records


def lost_classes(candidate: LoadedVersion, champion: LoadedVersion) -> list[str]:
    """The champion's classes the candidate was not trained on."""
    return sorted(set(champion.label_names) - set(candidate.label_names))


def champion_test_inputs(champion: LoadedVersion, spec: PipelineSpec) -> pd.DataFrame:
    """The labelled test inputs the champion was evaluated on, from its reference profile:
    `text`, `label` and those of the spec's slice columns it has.

    Stored with the version, so they are there however the spec's data has changed since;
    the text is redacted (PII replaced by placeholders), the same for both versions scored.
    """
    reference = champion.reference_records()
    slices = [c for c in spec.data.slice_columns if c in reference]
    return reference[[TEXT, LABEL, *slices]].reset_index(drop=True)


def baseline_predictions(
    train: pd.DataFrame, test: pd.DataFrame, label_names: Sequence[str]
) -> pd.DataFrame:
    """The TF-IDF baseline fitted on `train`'s rows of `label_names`, on every `test` row.

    Returns:
        `label` and `prediction` per test row, in order: paired with the versions' records.
    """
    rows = train[train[LABEL].isin(label_names)]
    model = fit_tfidf_baseline(rows[TEXT], rows[LABEL])
    return pd.DataFrame(
        {LABEL: test[LABEL].to_numpy(), "prediction": model.predict(test[TEXT].tolist())}
    )


def measure_side_by_side(
    versions: list[LoadedVersion],
    texts: list[str],
    *,
    samples: int,
    device: torch.device,
    bf16_on_cpu: bool = False,
) -> list[dict[str, object]]:
    """Per-request latency (alternating request by request between the versions, see
    `time_side_by_side`; in bf16 on a CPU with `bf16_on_cpu`, as served), the load it was
    measured under, and size."""
    runs = []
    for loaded in versions:
        summary, _ = loaded.profile_summary()
        encoded = encode(loaded.tokenizer, texts, int(summary["max_length"]))
        runs.append((loaded.model.to(device), encoded, loaded.tokenizer.pad_token_id))
    timings = time_side_by_side(runs, samples=samples, device=device, bf16_on_cpu=bf16_on_cpu)
    return [
        {**timing, "model_size_mb": model_size_mb(loaded.model)}
        for timing, loaded in zip(timings, versions, strict=True)
    ]


def pii_findings_in(artifact_texts: dict[str, list[str]], reference: pd.DataFrame) -> list[str]:
    """'artifact: ENTITY xN' for PII in the version's human-readable artifacts."""
    texts = dict(artifact_texts)
    if TEXT in reference:
        texts["reference_profile.parquet"] = reference[TEXT].fillna("").astype(str).tolist()
    findings = []
    for artifact, values in texts.items():
        hits = [hit.entity for found in pii.find_pii(values) for hit in found]
        for entity in sorted(set(hits)):
            findings.append(f"{artifact}: {entity} x{hits.count(entity)}")
    return findings


def slice_columns(spec: PipelineSpec) -> list[str]:
    """The columns the gate checks slice by: token-length bucket and the spec's slices."""
    return ["length", *spec.data.slice_columns]
