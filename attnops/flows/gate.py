"""Prefect flow `gate`: may the challenger go to canary? Decide and record why on the version."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import pandas as pd
from prefect import flow

from attnops.flows.tasks import compute_task, io_task
from attnops.models import aliases, evidence, registry, versions
from attnops.models.data import LabelledData, load_labelled_data
from attnops.models.modeling import pick_device
from attnops.monitors.gate import GateDecision, decide
from attnops.monitors.gate_evidence import (
    baseline_predictions,
    champion_test_inputs,
    gather_evidence,
    lost_classes,
    measure_side_by_side,
    score_inputs,
    slice_columns,
)
from attnops.monitors.reports import classification_report, drift_report
from attnops.settings import Settings
from attnops.spec import PipelineSpec, load_spec

GATE_FOLDER = "gate"


@io_task
def find_versions(spec: PipelineSpec, settings: Settings, candidate: str):
    """The candidate version (number or alias) and the champion, if one is set and differs."""
    client = registry.client_for(settings)
    found = aliases.resolve(client, spec.name, candidate)
    if found is None:
        raise LookupError(
            f"no version of '{spec.name}' has the alias '{candidate}'; run `attnops train` "
            "first or pass --version N"
        )
    champion = aliases.resolve(client, spec.name, aliases.CHAMPION)
    if champion is not None and str(champion.version) == str(found.version):
        raise ValueError(
            f"{spec.name} v{found.version} is already the champion; gate a newer version"
        )
    return str(found.version), None if champion is None else str(champion.version)


@io_task
def load_splits(spec: PipelineSpec, spec_path: str) -> LabelledData:
    """The spec's splits, read once: both versions and the baseline are judged on exactly
    these test inputs."""
    return load_labelled_data(spec.data, spec_path)


@compute_task
def score_version(
    spec: PipelineSpec, test: pd.DataFrame, settings: Settings, version: str, scratch: Path
):
    """Load the version (tokenizer verified) and score it on the test split."""
    client = registry.client_for(settings)
    loaded = versions.load_version(client, spec.name, version, scratch)
    evidence, records = gather_evidence(
        loaded,
        test,
        spec,
        device=pick_device(spec.training.device),
        artifact_texts=versions.artifact_texts(loaded),
    )
    return loaded, evidence, records


@compute_task
def score_on_champion_test(spec: PipelineSpec, loaded: list) -> list[pd.DataFrame]:
    """Every version's records on the champion's own test inputs (the last version's)."""
    inputs = champion_test_inputs(loaded[-1], spec)
    device = pick_device(spec.training.device)
    return [score_inputs(version, inputs, spec, device=device) for version in loaded]


@compute_task
def score_baseline(data: LabelledData, labels: tuple[str, ...]) -> pd.DataFrame:
    """The TF-IDF baseline, fitted on the train split, on the same test inputs."""
    return baseline_predictions(data.splits["train"], data.splits["test"], labels)


@compute_task
def time_versions(spec: PipelineSpec, test: pd.DataFrame, loaded: list) -> list[dict[str, object]]:
    """Latency of all versions at once, request by request in turn, on in-scope test inputs."""
    texts = test[test["label"].isin(loaded[0].label_names)]["text"].tolist()
    return measure_side_by_side(
        loaded,
        texts,
        samples=spec.gate.latency_samples,
        device=pick_device(spec.training.device),
        bf16_on_cpu=spec.serving.bf16,
    )


@compute_task
def write_reports(
    spec: PipelineSpec,
    loaded: list,
    cand_records: pd.DataFrame,
    champ_records: pd.DataFrame | None,
    folder: Path,
) -> None:
    """The Evidently reports for a reviewer: quality side by side and, with a champion, how
    the two versions' answers on the same inputs differ."""
    folder.mkdir()
    candidate, *champion = loaded
    versus = f"v{champion[0].version}" if champion else "its reference profile"
    heading = f"{spec.name} v{candidate.version} vs {versus}"
    labels = candidate.label_names
    in_scope = [
        r if r is None else r[r["label"].isin(labels)] for r in (champ_records, cand_records)
    ]
    classification_report(
        *in_scope,
        folder / "classification.html",
        # A champion may answer with classes the candidate lacks.
        labels=sorted(set().union(*(version.label_names for version in loaded))),
        title=f"{heading}: test-split quality",
        non_inferiority_margin=spec.gate.non_inferiority_margin,
    )
    if champ_records is not None:
        # Same inputs, two versions: how do their outputs differ? (Embeddings live in
        # each version's own space, so they are left out.)
        drift_report(
            champ_records.drop(columns="embedding"),
            cand_records.drop(columns="embedding"),
            folder / "drift.html",
            title=f"{heading}: outputs on the test split",
            slice_columns=spec.data.slice_columns,
            tsne_rows=0,
        )


@io_task
def record_decision(
    settings: Settings, spec: PipelineSpec, run_id: str, decision: GateDecision, folder: Path
) -> None:
    """The decision, its table and the reports onto the candidate version; verdict last."""
    verdict = "passed" if decision.passed else "failed"
    against = f"champion v{decision.champion}" if decision.champion else "absolute limits"
    evidence.record_decision(
        registry.client_for(settings),
        spec.name,
        decision.candidate,
        run_id,
        stage=GATE_FOLDER,
        verdict=verdict,
        heading=f"Gate: {verdict} (vs {against})",
        table=decision.table(),
        payload=decision.to_dict(),
        folder=folder,
        tags={
            "gate_reasons": decision.reasons(),
            "gate_champion": decision.champion or "none",
            "gate_verdict": decision.verdict,
        },
    )


# Flow defaults are literals: a deployment stores them as JSON ("challenger" = aliases.CHALLENGER).
@flow(name="gate", flow_run_name="gate-{spec_path}", log_prints=True)
def gate(spec_path: str, candidate: str = "challenger") -> GateDecision:
    """Gate a version against the champion (or absolute limits when there is none).

    The decision, each check's reason and the Evidently reports go onto the candidate
    version: tags `attnops.gate` / `attnops.gate_reasons`, artifacts under `gate/`.
    """
    spec = load_spec(spec_path)
    settings = Settings.from_env()
    settings.prepare()
    candidate_version, champion_version = find_versions(spec, settings, candidate)
    print(
        f"gating {spec.name} v{candidate_version} against "
        + (f"champion v{champion_version}" if champion_version else "absolute limits")
    )
    if spec.task == "generation":
        from attnops.flows.gate_generation import judge_generation  # not loaded for classifiers

        decision = judge_generation(
            spec,
            settings,
            candidate_version,
            champion_version,
            lambda run_id, decided, folder: record_decision(
                settings, spec, run_id, decided, folder
            ),
        )
        print(f"gate {'passed' if decision.passed else 'FAILED'}: {decision.reasons()}")
        return decision
    data = load_splits(spec, spec_path)
    test = data.splits["test"]
    with tempfile.TemporaryDirectory(dir=settings.home) as scratch:
        scratch = Path(scratch)
        cand_loaded, cand, cand_records = score_version(
            spec, test, settings, candidate_version, scratch
        )
        loaded, scored = [cand_loaded], [cand]
        champ_records = None
        if champion_version is not None:
            champ_loaded, champ, champ_records = score_version(
                spec, test, settings, champion_version, scratch
            )
            loaded.append(champ_loaded)
            scored.append(champ)
            if lost := lost_classes(cand_loaded, champ_loaded):
                # The candidate's test split has no inputs of classes it was not trained
                # on: only the champion's own test data shows what they were worth.
                print(
                    f"v{candidate_version} lacks {len(lost)} of the champion's classes; "
                    "scoring both on the champion's test data as well"
                )
                on_champion_test = score_on_champion_test(spec, loaded)
                scored = [
                    dataclasses.replace(e, champion_test_predictions=records)
                    for e, records in zip(scored, on_champion_test, strict=True)
                ]
        timings = time_versions(spec, test, loaded)
        cand, *rest = [
            dataclasses.replace(e, performance=t) for e, t in zip(scored, timings, strict=True)
        ]
        champ = rest[0] if rest else None
        run_id, labels = cand_loaded.run_id, cand_loaded.label_names
        decision = decide(
            cand,
            champ,
            spec.gate,
            label_names=labels,
            slice_columns=slice_columns(spec),
            ece_bins=spec.evaluation.ece_bins,
            baseline=None
            if spec.gate.min_baseline_margin is None
            else score_baseline(data, labels),
        )
        folder = scratch / "gate"
        write_reports(spec, loaded, cand_records, champ_records, folder)
        record_decision(settings, spec, run_id, decision, folder)
    print(f"gate {'passed' if decision.passed else 'FAILED'}: {decision.reasons()}")
    return decision
