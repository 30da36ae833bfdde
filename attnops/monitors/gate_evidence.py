"""Gather a version's gate evidence: score it on the test split now, on this machine.

The candidate and the champion are scored on the same inputs in the same run, so the
paired test compares like with like, and timed request by request in turn, so latency
ratios are not skewed by another machine, another day or a busy minute.
"""

from __future__ import annotations

import pandas as pd
import torch

from attnops.models.batching import encode
from attnops.models.data import LABEL, TEXT
from attnops.models.metrics import length_bucket
from attnops.models.ood import load_detector
from attnops.models.performance import interleaved_latency_ms, model_size_mb
from attnops.models.records import score_records
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
    model = loaded.model.to(device)
    summary, projection = loaded.profile_summary()
    records = score_records(
        model,
        loaded.tokenizer,
        test[TEXT].tolist(),
        label_names=loaded.label_names,
        max_length=int(summary["max_length"]),
        projection=projection,
        device=device,
        attention_share=spec.monitoring.attention_sample_share,
        seed=spec.training.seed,
        out_of_scope=load_detector(loaded.folder / REFERENCE_FOLDER),
    )
    reference = loaded.reference_records()
    detector = UnsupportedAssertionDetector.from_summary(
        reference, summary, spec.monitoring.unsupported_distance_quantile
    )
    records[LABEL] = test[LABEL].to_numpy()
    records["unsupported"] = detector.labelled_flags(records, loaded.label_names)
    records["length"] = length_bucket(
        records["n_tokens"].to_numpy(), spec.evaluation.length_buckets
    )
    for column in spec.data.slice_columns:
        records[column] = test[column].to_numpy()

    evidence = VersionEvidence(
        version=loaded.version,
        predictions=records,
        performance={},  # measured for all versions together: `measure_side_by_side`
        attention=loaded.evaluation()["attention"],
        tokenizer_sha256=loaded.tokenizer_sha256,
        label_names=loaded.label_names,
        pii_findings=_pii_findings(artifact_texts or {}, reference),
    )
    return evidence, records


def measure_side_by_side(
    versions: list[LoadedVersion], texts: list[str], *, samples: int, device: torch.device
) -> list[dict[str, object]]:
    """Per-request latency (alternating request by request between the versions) and size."""
    runs = []
    for loaded in versions:
        summary, _ = loaded.profile_summary()
        encoded = encode(loaded.tokenizer, texts, int(summary["max_length"]))
        runs.append((loaded.model.to(device), encoded, loaded.tokenizer.pad_token_id))
    latency = interleaved_latency_ms(runs, samples=samples, device=device)
    return [
        {"latency_ms": ms.tolist(), "model_size_mb": model_size_mb(loaded.model)}
        for ms, loaded in zip(latency, versions, strict=True)
    ]


def _pii_findings(artifact_texts: dict[str, list[str]], reference: pd.DataFrame) -> list[str]:
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
