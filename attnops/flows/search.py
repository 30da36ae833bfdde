"""Hyperparameter search in the train flow: trials as Prefect tasks, each a nested MLflow run.

`run_search` is called by the train flow when the spec has `training.search`; the `search`
flow runs trials only, as an extra worker on the same study (start it on more machines or
work-pool slots with the same spec and ATTNOPS_SEARCH_DB pointing at one shared database).
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from prefect import flow

from attnops.flows.tasks import compute_task, io_task
from attnops.models import registry, search_evidence
from attnops.models import search as optuna_search
from attnops.models.data import LabelledData, load_labelled_data
from attnops.models.train import TrainedClassifier
from attnops.settings import Settings
from attnops.spec import PipelineSpec, load_spec

PARENT_RUN = "mlflow_parent_run_id"
"""Study attribute: the MLflow run that trials of any worker are nested under."""


@dataclass(frozen=True)
class SearchOutcome:
    spec: PipelineSpec
    """The spec with the best trial's training values: what the registered model used."""
    card_section: str
    """Markdown for the model card: what was searched and what won."""
    trained: TrainedClassifier | None
    """The winning trial's model when this machine kept it; None: train `spec` again."""


@compute_task
def run_trial(
    spec: PipelineSpec, data: LabelledData, settings: Settings, parent_run_id: str | None
) -> int | None:
    """One trial in its own study handle (tasks may run in threads or on other workers).

    It is logged as a nested run of `parent_run_id`, else of the train run that last
    worked on the study (an extra worker's trials show up there too).
    """
    study = optuna_search.open_study(spec, data.data_sha256, settings.search_db)
    trial = optuna_search.run_trial(study, spec, data, keep_dir=kept_trials(settings, study))
    if trial is None:
        return None
    parent_run_id = parent_run_id or study.user_attrs.get(PARENT_RUN)
    if parent_run_id is not None:
        client = registry.client_for(settings)
        registry.log_trial(client, parent_run_id, study.study_name, trial)
    print(f"trial {trial.number}: {trial.state.name}, {trial.value}, {trial.params}")
    return trial.number


@io_task
def log_search(settings: Settings, run_id: str, spec: PipelineSpec, data: LabelledData) -> str:
    """The trial table, importance plot and best values on the run; the card's section."""
    study = optuna_search.open_study(spec, data.data_sha256, settings.search_db)
    client = registry.client_for(settings)
    with tempfile.TemporaryDirectory(dir=settings.home) as scratch:
        files = search_evidence.write_evidence(study, Path(scratch))
        registry.log_search_evidence(client, run_id, files, study.best_trial.params)
    return search_evidence.summary_markdown(study)


@compute_task
def best_configuration(
    settings: Settings, spec: PipelineSpec, data: LabelledData
) -> tuple[PipelineSpec, TrainedClassifier | None]:
    """The best trial's spec, and its model if this machine kept it (the others are deleted)."""
    study = optuna_search.open_study(spec, data.data_sha256, settings.search_db)
    best = optuna_search.best_spec(spec, study)
    kept_dir = kept_trials(settings, study)
    winner = kept_dir / f"trial-{study.best_trial.number}"
    trained = optuna_search.kept_classifier(best, data, winner)
    for folder in kept_dir.glob("trial-*"):
        if folder != winner:
            shutil.rmtree(folder, ignore_errors=True)
    print(
        f"best: trial {study.best_trial.number} {study.best_trial.params}, "
        + ("kept" if trained else "not kept here: training it again")
    )
    return best, trained


def kept_trials(settings: Settings, study) -> Path:
    """Where this machine keeps the weights of the study's best trials so far."""
    return settings.home / "search" / study.study_name


def run_trials(
    spec: PipelineSpec, data: LabelledData, settings: Settings, parent_run_id: str | None
) -> int:
    """Submit trials, `parallel_trials` at a time, until the study's budget is spent.

    Returns the number of trials this call ran. Other workers on the same study may run
    trials meanwhile; the budget counts theirs too.
    """
    search = optuna_search.searched(spec)
    study = optuna_search.open_study(spec, data.data_sha256, settings.search_db)
    if parent_run_id is not None:
        study.set_user_attr(PARENT_RUN, parent_run_id)
    finished = study.get_trials(deepcopy=False, states=optuna_search.FINISHED)
    print(
        f"search: study {study.study_name} ({len(finished)} trials finished so far), "
        f"budget n_trials={search.n_trials} time_budget_s={search.time_budget_s}"
    )
    ran = 0
    while (left := optuna_search.trials_left(study, search)) > 0:
        futures = [
            run_trial.submit(spec, data, settings, parent_run_id)
            for _ in range(min(left, search.parallel_trials))
        ]
        numbers = [n for n in (f.result() for f in futures) if n is not None]
        if not numbers:  # other workers took the last slots
            break
        ran += len(numbers)
    return ran


def run_search(
    spec: PipelineSpec, data: LabelledData, settings: Settings, run_id: str
) -> SearchOutcome:
    """Run the spec's search (resuming its study) and return the best configuration."""
    run_trials(spec, data, settings, run_id)
    best, trained = best_configuration(settings, spec, data)
    card_section = log_search(settings, run_id, spec, data)
    return SearchOutcome(spec=best, card_section=card_section, trained=trained)


@flow(name="search", flow_run_name="search-{spec_path}", log_prints=True)
def search(spec_path: str) -> int:
    """Run trials of the spec's study until its budget is spent (an extra search worker).

    Trains and registers nothing: the train flow with the same spec does that with the
    best configuration. Returns the number of trials this worker ran.
    """
    spec = load_spec(spec_path)
    settings = Settings.from_env()
    settings.prepare()
    data = load_labelled_data(spec.data, spec_path)
    return run_trials(spec, data, settings, parent_run_id=None)
