"""Gather a version's gate evidence: score it on the test split now, on this machine.

The candidate and the champion are scored on the same inputs in the same run, so the
paired test compares like with like and latency ratios are not skewed by another machine
or another day.
"""

from __future__ import annotations

import pandas as pd
import torch

from attnops.models.batching import encode
from attnops.models.data import LABEL, TEXT
from attnops.models.metrics import length_bucket
from attnops.models.performance import measure_performance
from attnops.models.records import score_records
from attnops.models.versions import LoadedVersion
from attnops.monitors import pii
from attnops.monitors.gate import VersionEvidence
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
    )
    reference = loaded.reference_records()
    detector = UnsupportedAssertionDetector(
        reference,
        out_of_scope_threshold=float(summary["out_of_scope_threshold"]),
        out_of_scope_label=summary.get("out_of_scope_label"),
        distance_quantile=spec.monitoring.unsupported_distance_quantile,
    )
    records[LABEL] = test[LABEL].to_numpy()
    records["unsupported"] = detector.flags(records)
    records["length"] = length_bucket(
        records["n_tokens"].to_numpy(), spec.evaluation.length_buckets
    )
    for column in spec.data.slice_columns:
        records[column] = test[column].to_numpy()

    in_scope = test[test[LABEL].isin(loaded.label_names)]
    timing = measure_performance(
        model,
        encode(loaded.tokenizer, in_scope[TEXT].tolist(), int(summary["max_length"])),
        pad_id=loaded.tokenizer.pad_token_id,
        device=device,
        latency_samples=spec.evaluation.latency_samples,
        throughput_batch_size=spec.evaluation.throughput_batch_size,
    )
    evidence = VersionEvidence(
        version=loaded.version,
        predictions=records,
        performance={k: timing[k] for k in ("latency_ms_p95", "latency_ms_p99", "model_size_mb")},
        attention=loaded.evaluation()["attention"],
        tokenizer_sha256=loaded.tokenizer_sha256,
        pii_findings=_pii_findings(artifact_texts or {}, reference),
    )
    return evidence, records


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
