"""Prefect flow `train`: load -> fine-tune -> evaluate -> register (alias challenger)."""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from pathlib import Path

from prefect import flow

from attnops.flows.search import run_search
from attnops.flows.tasks import compute_task, io_task
from attnops.models import registry
from attnops.models.evaluate import Evaluation
from attnops.models.task_family import family_for
from attnops.monitors.reference import save_task_reference
from attnops.settings import Settings
from attnops.spec import PipelineSpec, load_spec


@io_task
def open_run(
    spec: PipelineSpec, spec_path: str, settings: Settings, tags: dict[str, str] | None
) -> str:
    client = registry.client_for(settings)
    return registry.start_run(client, settings, spec, Path(spec_path).read_text(), tags)


@io_task
def load_data(spec: PipelineSpec, spec_path: str):
    if spec.data.generator == "ticket-replies":
        from attnops.demo.ticket_replies import write_missing_ticket_replies

        files = spec.data.split_files
        files += [spec.generation.hallucination_set] if spec.generation.hallucination_set else []
        if written := write_missing_ticket_replies([Path(f) for f in files], spec.training.seed):
            print(f"demo data written: {', '.join(map(str, written))}")
    family = family_for(spec)
    data = family.load_data(spec, spec_path)
    print(family.describe_data(data))
    return data


@compute_task
def fine_tune(spec: PipelineSpec, data, checkpoint_dir: Path, resume: bool):
    return family_for(spec).fine_tune(spec, data, checkpoint_dir=checkpoint_dir, resume=resume)


@compute_task
def evaluate(spec: PipelineSpec, trained, data, out_dir: Path) -> Evaluation:
    evaluation = family_for(spec).evaluate(spec, trained, data, out_dir)
    # The reference profile is stored redacted, with its drift thresholds calibrated.
    profile = save_task_reference(evaluation.reference, out_dir, spec)
    return dataclasses.replace(evaluation, files=[*evaluation.files, *profile])


@io_task
def register(
    spec: PipelineSpec,
    settings: Settings,
    run_id: str,
    trained,
    data,
    evaluation: Evaluation,
    card_section: str | None = None,
) -> registry.RegisteredVersion:
    family = family_for(spec)
    client = registry.client_for(settings)
    registry.log_evidence(client, run_id, family.training_evidence(data, trained), evaluation)
    return registry.register_version(
        client,
        run_id,
        spec=spec,
        family=family,
        model=trained.model,
        tokenizer=trained.tokenizer,
        data=data,
        data_sha256=data.data_sha256,
        evaluation=evaluation,
        card_section=card_section,
    )


@flow(name="train", flow_run_name="train-{spec_path}", log_prints=True)
def train(
    spec_path: str, resume: bool = False, tags: dict[str, str] | None = None
) -> registry.RegisteredVersion:
    """Fine-tune and evaluate the spec's model and register it as the `challenger` version.

    The MLflow run is opened first so a failure is visible in the UI as a FAILED run with
    its reason; a model version is created only when everything before it succeeded.
    Checkpoints live in .attnops/checkpoints/NAME until the run succeeds, so `resume`
    continues an interrupted run. `tags` go on the run (e.g. what triggered it).
    """
    spec = load_spec(spec_path)
    settings = Settings.from_env()
    settings.prepare()
    run_id = open_run(spec, spec_path, settings, tags)
    checkpoints = settings.home / "checkpoints" / spec.name
    try:
        data = load_data(spec, spec_path)
        card_section, trained = None, None
        if spec.training.search is not None:
            # The study resumes after a restart; the winner is registered (trained again
            # below when another machine ran it).
            searched = run_search(spec, data, settings, run_id)
            spec, card_section, trained = searched.spec, searched.card_section, searched.trained
        if trained is None:
            trained = fine_tune(spec, data, checkpoints, resume)
        with tempfile.TemporaryDirectory(dir=settings.home) as scratch:
            evaluation = evaluate(spec, trained, data, Path(scratch))
            version = register(spec, settings, run_id, trained, data, evaluation, card_section)
    except BaseException as exc:
        try:
            client = registry.client_for(settings)
            registry.fail_run(client, run_id, spec.name, f"{type(exc).__name__}: {exc}")
        except Exception as cleanup:  # never hide the original error behind this one
            print(f"could not mark MLflow run {run_id} failed: {cleanup}")
        raise
    shutil.rmtree(checkpoints, ignore_errors=True)
    summary = family_for(spec).summary(evaluation.metrics)
    print(f"registered {version.name} v{version.version} (alias challenger): {summary}")
    return version
