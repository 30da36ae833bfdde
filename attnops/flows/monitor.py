"""Prefect flow `monitor`: the latest champion window vs its reference profile.

Run on the spec's schedule (deployment `monitor`) or by hand (`attnops monitor`). Each run
is an MLflow run in the experiment `<name>-monitoring`: the window's metrics, the
assessment JSON (per check: statistic, calibrated threshold, effect size, floor,
significant, material) and the Evidently drift report. When the window raises an alarm (a
check both beyond its calibrated threshold and with an effect at or above its floor: drift,
unsupported assertions, a drop of the label-free accuracy estimate) the Prefect event
`attnops.drift.detected` carries the evidence and the severity (`high` when the estimated
accuracy dropped materially, else `low`) to the `retrain` deployment's trigger; checks that
are significant but below their floor are reported and raise nothing. With
`ATTNOPS_PUSHGATEWAY_URL` set, the verdict also goes to Prometheus as gauges (drift score
per check, alarm, estimated accuracy), last, after MLflow and the event have it; a
champion still waiting for its first full window clears them. A Pushgateway that stays
unreachable fails the run (its alerts depend on it).

A `task: generation` spec judges the champion's window of the generation log against its
`reference_generation.parquet` (`monitors.generation_monitor`): prompt and output drift, the
live hallucination rate from the detector's flags (outputs not scored yet left out), PII
leaks. An alarm on the outputs themselves (hallucinations, leaks) is `high` severity, drift
alone `low`; the event, the MLflow run and the gauges are the same.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import pandas as pd
from mlflow.entities import Metric, Param
from prefect import flow
from prefect.events import emit_event

from attnops.flows.tasks import compute_task, io_task
from attnops.models import aliases, registry, report_json, versions
from attnops.models.versions import REFERENCE_FOLDER
from attnops.monitors.generation_monitor import (
    GENERATION_PROFILE_TABLE,
    GenerationAssessment,
    assess_generation_window,
)
from attnops.monitors.pushed_metrics import MonitorMetrics, clear_pushed
from attnops.monitors.reference import ReferenceProfile, WindowAssessment
from attnops.serving.log_reader import LogReader
from attnops.settings import Settings
from attnops.spec import PipelineSpec, load_spec

DRIFT_EVENT = "attnops.drift.detected"
MONITORING_SUFFIX = "-monitoring"


@io_task
def read_window(spec: PipelineSpec, settings: Settings) -> tuple[str, str, object]:
    """(champion version, its run id, its newest window of answered requests)."""
    client = registry.client_for(settings)
    mv = aliases.resolve(client, spec.name, aliases.CHAMPION)
    if mv is None:
        raise LookupError(f"model '{spec.name}' has no champion: nothing is served to monitor")
    if spec.task == "generation":
        # The reader is the serving side's; imported here so classification never loads it.
        from attnops.serving.generation_log_reader import GenerationLogReader

        window = GenerationLogReader(settings.inference_db).window(
            version=str(mv.version), route=aliases.CHAMPION, limit=spec.monitoring.window_size
        )
        return str(mv.version), mv.run_id, window
    log = LogReader(settings.inference_db)
    window = log.window(
        version=str(mv.version),
        route=aliases.CHAMPION,
        limit=spec.monitoring.window_size,
        answered_only=True,
    )
    return str(mv.version), mv.run_id, window


@io_task
def last_judged_ts(settings: Settings, experiment: str, version: str) -> float:
    """Newest request time the previous monitoring run of this version judged (0 if none)."""
    client = registry.client_for(settings)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return 0.0
    runs = client.search_runs(
        [found.experiment_id],
        filter_string=f"tags.`attnops.version` = '{version}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return float(runs[0].data.tags.get("attnops.window_last_ts", 0)) if runs else 0.0


@compute_task
def assess(
    spec: PipelineSpec, reference_folder: Path, window
) -> tuple[ReferenceProfile, WindowAssessment]:
    profile = ReferenceProfile.load(reference_folder, spec.monitoring)
    return profile, profile.assess(window)


@compute_task
def assess_generation(spec: PipelineSpec, reference_folder: Path, window) -> GenerationAssessment:
    path = reference_folder / GENERATION_PROFILE_TABLE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path.name} not found in the champion's {REFERENCE_FOLDER}/: the version has no "
            "generation reference profile; register it with this attnops version (attnops train)"
        )
    return assess_generation_window(window, pd.read_parquet(path), spec)


@io_task
def log_monitoring_run(
    spec: PipelineSpec,
    settings: Settings,
    version: str,
    window,
    assessment: WindowAssessment | GenerationAssessment,
    folder: Path,
) -> str:
    client = registry.client_for(settings)
    experiment = spec.name + MONITORING_SUFFIX
    experiment_id = registry.experiment_for(client, settings, experiment)
    run = client.create_run(
        experiment_id,
        run_name=f"monitor-v{version}",
        tags={
            f"{registry.TAG}stage": "monitor",
            f"{registry.TAG}model": spec.name,
            f"{registry.TAG}version": version,
            f"{registry.TAG}alarm": str(assessment.alarm).lower(),
            f"{registry.TAG}severity": assessment.severity,
            f"{registry.TAG}reasons": registry.tag_value("; ".join(assessment.reasons())) or "none",
            f"{registry.TAG}window_last_ts": repr(float(window["ts"].max())),
        },
    )
    run_id = run.info.run_id
    now_ms = int(time.time() * 1000)
    client.log_batch(
        run_id,
        metrics=[Metric(k, float(v), now_ms, 0) for k, v in assessment.metrics().items()],
        params=[Param("window_size", str(len(window))), Param("champion_version", version)],
    )
    (folder / "assessment.json").write_text(report_json.dumps(assessment.to_dict()))
    client.log_artifacts(run_id, str(folder), "monitor")
    client.set_terminated(run_id)
    return run_id


@io_task
def push_gauges(
    url: str, model: str, version: str, assessment: WindowAssessment | GenerationAssessment
) -> None:
    gauges = MonitorMetrics()
    if isinstance(assessment, GenerationAssessment):
        gauges.record_generation(version, assessment)
    else:
        gauges.record(version, assessment)
    gauges.push(url, model)


@io_task
def clear_gauges(url: str, model: str) -> None:
    clear_pushed(url, model)


@flow(name="monitor", flow_run_name="monitor-{spec_path}", log_prints=True)
def monitor(spec_path: str) -> dict:
    """Judge the newest window of champion traffic; emit `attnops.drift.detected` on alarm.

    Returns:
        `status` (`alarm`, `ok`, `waiting` for a full window, or `stale` when no request
        arrived since the last judged window), and with a judgement `severity`, `reasons`,
        `run_id`, `event_id`.
    """
    spec = load_spec(spec_path)
    settings = Settings.from_env()
    settings.prepare()
    version, run_id, window = read_window(spec, settings)
    size = spec.monitoring.window_size
    if len(window) < size:
        print(f"v{version}: {len(window)} of {size} requests logged; waiting for a full window")
        if settings.pushgateway_url:  # a verdict on an earlier champion must not stand for it
            clear_gauges(settings.pushgateway_url, spec.name)
        return {"status": "waiting", "records": len(window)}
    experiment = spec.name + MONITORING_SUFFIX
    if float(window["ts"].max()) <= last_judged_ts(settings, experiment, version):
        print(f"v{version}: no new requests since the last monitoring run")
        return {"status": "stale", "records": len(window)}
    with tempfile.TemporaryDirectory(dir=settings.home) as scratch:
        scratch = Path(scratch)
        versions.download_evidence(run_id, scratch / "evidence")
        folder = scratch / "monitor"
        folder.mkdir()
        reference_folder = scratch / "evidence" / REFERENCE_FOLDER
        if spec.task == "generation":
            assessment = assess_generation(spec, reference_folder, window)
            (folder / "checks.md").write_text(assessment.table() + "\n")
            print(assessment.table())
        else:
            assessment = judge_classification(spec, version, reference_folder, window, folder)
        monitoring_run = log_monitoring_run(spec, settings, version, window, assessment, folder)
    result = {
        "status": "alarm" if assessment.alarm else "ok",
        "version": version,
        "run_id": monitoring_run,
        "severity": assessment.severity,
        "reasons": assessment.reasons(),
        "event_id": None,
    }
    if assessment.alarm:
        event = emit_event(
            DRIFT_EVENT,
            resource={"prefect.resource.id": spec.name, "attnops.version": version},
            payload={
                "version": version,
                "monitoring_run_id": monitoring_run,
                "severity": assessment.severity,
                **_event_figures(assessment),
                "reasons": assessment.reasons(),
                "window_records": len(window),
                "window_last_ts": float(window["ts"].max()),
                "at": time.time(),
            },
        )
        result["event_id"] = str(event.id) if event else None
        client = registry.client_for(settings)
        client.set_tag(monitoring_run, f"{registry.TAG}event_id", result["event_id"] or "not sent")
        print(
            f"ALARM ({assessment.severity} severity) on v{version}: "
            + "; ".join(assessment.reasons())
        )
    else:
        print(f"v{version}: window of {len(window)} requests within the reference's range")
    if isinstance(assessment, GenerationAssessment):
        for note in assessment.notes():
            print(f"note: {note}")
    immaterial = assessment.drift.immaterial_checks
    if immaterial:
        print(f"significant but below their effect-size floor (no alarm): {', '.join(immaterial)}")
    if settings.pushgateway_url:
        push_gauges(settings.pushgateway_url, spec.name, version, assessment)
        print(f"gauges pushed to the Pushgateway at {settings.pushgateway_url}")
    return result


def judge_classification(
    spec: PipelineSpec, version: str, reference_folder: Path, window, folder: Path
) -> WindowAssessment:
    """The classification verdict, with the Evidently drift report written into `folder`."""
    # Evidently takes seconds to import: only a window that is judged pays for it.
    from attnops.monitors.reports import drift_report

    profile, assessment = assess(spec, reference_folder, window)
    drift_report(
        profile.records,
        window,
        folder / "drift.html",
        title=f"{spec.name} v{version}: live window of {len(window)} vs reference profile",
        slice_columns=spec.data.slice_columns,
        tsne_rows=0,
    )
    return assessment


def _event_figures(assessment: WindowAssessment | GenerationAssessment) -> dict[str, float]:
    """What the event adds for its task: the estimated accuracy drop, or the rates."""
    if isinstance(assessment, GenerationAssessment):
        return {
            "hallucination_rate": assessment.hallucinations.rate,
            "reference_hallucination_rate": assessment.reference_hallucinations.rate,
            "pii_leak_rate": assessment.pii_leaks.rate,
        }
    return {"estimated_accuracy_drop": assessment.estimated_accuracy_drop}
