"""Hyperparameter search with Optuna: one study per spec and data, trials that prune and resume.

Needs optuna and the training code only (no MLflow, no Prefect): the flow decides where
trials run and what is logged. The study lives in a database (any SQLAlchemy URL), which is
what makes the search survive restarts and spread over processes:

- a restarted flow opens the same study (its name comes from the spec, the data fingerprint
  and the search settings) and spends only the budget left;
- a running trial writes a heartbeat; one silent for longer than the grace period was
  killed, so the next trial to start marks it failed and queues its parameters again;
- trial numbers and queued trials are claimed in the database, so processes sharing one
  study never run the same trial, and each trial's random draws are seeded by its number.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import socket
import warnings
from datetime import datetime
from pathlib import Path

import numpy as np
import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.storages import RetryHeartbeatStaleTrialCallback, fail_stale_trials
from optuna.trial import FrozenTrial, TrialState
from safetensors.torch import load_model, save_model

from attnops.models.batching import encode
from attnops.models.calibration import fit_temperature, fold_temperature
from attnops.models.classifier import train_classifier
from attnops.models.data import TEXT, LabelledData
from attnops.models.distributed import rank_device
from attnops.models.inference import predict
from attnops.models.modeling import build_classifier, load_tokenizer
from attnops.models.search_storage import ClaimSafeStorage
from attnops.models.train import TrainedClassifier, TrainResult
from attnops.spec import PipelineSpec, SearchSpec, TrainingSpec

OBJECTIVE = "best validation macro-F1"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
"""Trials that count against `n_trials`; a killed (failed) trial is run again instead."""


def study_name(spec: PipelineSpec, data_sha256: str) -> str:
    """The spec's study: a restarted flow with the same spec and data resumes it.

    The budget and the parallelism are left out of the name, so raising `n_trials` continues
    the same study; anything a trial's score depends on is in it.
    """
    search = searched(spec)
    if search.study_name:
        return search.study_name
    scored = {
        "model": spec.model.model_dump(mode="json"),
        "training": spec.training.model_dump(mode="json", exclude={"search", "distributed"}),
        "search": search.model_dump(
            mode="json",
            include={
                "params",
                "sampler_startup_trials",
                "pruner",
                "pruner_startup_trials",
                "pruner_warmup_evaluations",
            },
        ),
    }
    digest = hashlib.sha256(json.dumps(scored, sort_keys=True).encode()).hexdigest()
    return f"{spec.name}-{data_sha256[:12]}-{digest[:8]}"


def open_study(spec: PipelineSpec, data_sha256: str, storage_url: str) -> optuna.Study:
    """Create the spec's study in `storage_url`, or load it when it exists."""
    search = searched(spec)
    if spec.training.distributed.world_size > 1:
        raise ValueError(
            "training.search runs each trial in one process, which cannot follow a torchrun "
            "job; set training.distributed to one process or remove training.search"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)  # heartbeats: stable in practice
        storage = ClaimSafeStorage(
            storage_url,
            # SQLite locks the whole file per write: wait for the other process, don't fail.
            engine_kwargs={"connect_args": {"timeout": 60}} if _is_sqlite(storage_url) else {},
            heartbeat_interval=search.heartbeat_interval_s,
            grace_period=search.grace_period_s,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(
                max_retry=search.max_retries
            ),
        )
    pruner = (
        optuna.pruners.MedianPruner(
            n_startup_trials=search.pruner_startup_trials,
            n_warmup_steps=search.pruner_warmup_evaluations,
        )
        if search.pruner == "median"
        else optuna.pruners.NopPruner()
    )
    study = optuna.create_study(
        storage=storage,
        study_name=study_name(spec, data_sha256),
        direction="maximize",
        sampler=_sampler(search, spec.training.seed),
        pruner=pruner,
        load_if_exists=True,
    )
    if search.first_trial_from_spec and not study.get_trials(deepcopy=False):
        written = {name: getattr(spec.training, name) for name in search.params}
        inside = {name: v for name, v in written.items() if _inside(search.params[name], v)}
        if inside:  # the fields left out are drawn
            study.enqueue_trial(inside, skip_if_exists=True)
    return study


def trials_left(study: optuna.Study, search: SearchSpec) -> int:
    """Trials that may start now: 0 once the budget is spent by finished and running trials.

    Killed trials are failed first (their heartbeat went stale), so they stop holding a
    slot. With only a time budget, any number may start until the time is spent. Until a
    trial completes, one more may always start: a search ends with a configuration to use.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        fail_stale_trials(study)
    trials = study.get_trials(deepcopy=False)
    if search.time_budget_s is not None and spent_seconds(trials) >= search.time_budget_s:
        left = 0
    elif search.n_trials is None:
        left = search.parallel_trials
    else:
        taken = sum(t.state in (*FINISHED, TrialState.RUNNING) for t in trials)
        left = max(0, search.n_trials - taken)
    if not any(t.state == TrialState.COMPLETE for t in trials):
        return max(left, 1)
    return left


def spent_seconds(trials: list[FrozenTrial]) -> float:
    """Trial time charged to the budget: finished trials, and running ones so far.

    A failed (killed) trial is not charged, as it does not count against `n_trials`.
    """
    now = datetime.now()
    return sum(
        ((t.datetime_complete or now) - t.datetime_start).total_seconds()
        for t in trials
        if t.datetime_start is not None and t.state in (*FINISHED, TrialState.RUNNING)
    )


def run_trial(
    study: optuna.Study,
    spec: PipelineSpec,
    data: LabelledData,
    *,
    keep_dir: Path | None = None,
    progress: bool = False,
) -> FrozenTrial | None:
    """Run the study's next trial here: a killed trial's parameters first, else new ones.

    The trial fine-tunes on the train split with its drawn `training` values and reports the
    validation macro-F1 of every evaluation; the pruner may stop it there. A completed trial
    that beats the study's best so far is kept in `keep_dir/trial-N`, so the winner can be
    registered without training it again (`kept_classifier`).

    Returns:
        The finished (complete or pruned) trial, or None when the budget is already spent.
    """
    search = searched(spec)
    if trials_left(study, search) == 0:
        return None

    def objective(trial: optuna.Trial) -> float:
        # Draws depend on (seed, trial number) and on the finished trials only: reproducible
        # in one process, and two processes never draw the same random-phase point.
        study.sampler = _sampler(search, spec.training.seed + trial.number)
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        trial_spec = spec_for_trial(spec, trial)
        evaluations = 0

        def report(step: int, val_macro_f1: float, last: bool) -> None:
            nonlocal evaluations
            evaluations += 1
            trial.report(val_macro_f1, evaluations)
            # At the last evaluation pruning saves nothing and would lose a complete trial.
            if not last and trial.should_prune():
                raise optuna.TrialPruned(
                    f"validation macro-F1 {val_macro_f1:.4f} at evaluation {evaluations} "
                    f"(step {step}) is below the median of earlier trials"
                )

        best_so_far = max(
            (t.value for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))),
            default=float("-inf"),
        )
        trained = train_classifier(trial_spec, data, on_evaluate=report, progress=progress)
        score = trained.result.best_val_macro_f1
        if keep_dir is not None and score > best_so_far:
            keep_trial(keep_dir / f"trial-{trial.number}", trained)
        return score

    finished: list[FrozenTrial] = []
    study.optimize(
        objective, n_trials=1, callbacks=[lambda _s, t: finished.append(t)], gc_after_trial=True
    )
    return finished[0]


def keep_trial(folder: Path, trained: TrainedClassifier) -> None:
    """A trial's best weights and training record, to register without training again."""
    folder.mkdir(parents=True, exist_ok=True)
    save_model(trained.model, str(folder / "model.safetensors"))
    (folder / "train_result.json").write_text(json.dumps(dataclasses.asdict(trained.result)))


def kept_classifier(
    spec: PipelineSpec, data: LabelledData, folder: Path
) -> TrainedClassifier | None:
    """The trial kept in `folder` (trained with `spec`'s values), calibrated as `spec` asks.

    None when it was not kept here (e.g. another machine ran it): then train it again.
    """
    if not (folder / "model.safetensors").is_file():
        return None
    device = rank_device(spec.training.device)
    tokenizer = load_tokenizer(spec.model)
    model = build_classifier(spec.model, data.label_names)
    load_model(model, str(folder / "model.safetensors"))
    model.to(device).eval()
    result = TrainResult(**json.loads((folder / "train_result.json").read_text()))
    result = dataclasses.replace(result, run_card={**result.run_card, "search_trial": folder.name})
    temperature = 1.0
    if spec.training.calibrate:  # trials skip it: only the registered model needs it
        frame = data.in_scope("validation")
        validation = encode(
            tokenizer, frame[TEXT].tolist(), spec.model.max_length, data.label_ids(frame)
        )
        probs = predict(model, validation, pad_id=tokenizer.pad_token_id, device=device).probs
        temperature = fit_temperature(probs, np.asarray(validation.labels))
        fold_temperature(model, temperature)
    return TrainedClassifier(
        model=model, tokenizer=tokenizer, result=result, device=device, temperature=temperature
    )


def spec_for_trial(spec: PipelineSpec, trial: optuna.Trial) -> PipelineSpec:
    """The spec with `trial`'s draws for the searched fields (uncalibrated: only scored)."""
    drawn = {name: _suggest(trial, name, param) for name, param in searched(spec).params.items()}
    return with_training(spec, {**drawn, "calibrate": False})


def best_spec(spec: PipelineSpec, study: optuna.Study) -> PipelineSpec:
    """The spec with the best completed trial's values, to train and register."""
    if not any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
        raise ValueError(
            f"search study '{study.study_name}' has no completed trial: every trial was pruned "
            "or failed; raise training.search.n_trials / time_budget_s or widen the ranges"
        )
    return with_training(spec, study.best_trial.params)


def with_training(spec: PipelineSpec, values: dict[str, object]) -> PipelineSpec:
    """`spec` with these `training` values, validated, and without a search of its own."""
    try:
        training = TrainingSpec.model_validate(
            {**spec.training.model_dump(), **values, "search": None}
        )
    except ValueError as exc:
        raise ValueError(f"training values {values} from the search are invalid: {exc}") from exc
    return spec.model_copy(update={"training": training})


def searched(spec: PipelineSpec) -> SearchSpec:
    if spec.training.search is None:
        raise ValueError(f"spec '{spec.name}' has no training.search section")
    return spec.training.search


def _sampler(search: SearchSpec, seed: int) -> optuna.samplers.BaseSampler:
    return optuna.samplers.TPESampler(n_startup_trials=search.sampler_startup_trials, seed=seed)


def _suggest(trial: optuna.Trial, name: str, param) -> object:
    if param.type == "categorical":
        return trial.suggest_categorical(name, list(param.choices))
    if param.type == "int":
        step = int(param.step or 1)
        return trial.suggest_int(name, int(param.low), int(param.high), step=step, log=param.log)
    return trial.suggest_float(name, param.low, param.high, step=param.step, log=param.log)


def _inside(param, value) -> bool:
    if param.type == "categorical":
        return value in param.choices
    return value is not None and param.low <= value <= param.high


def _is_sqlite(url: str) -> bool:
    return url.startswith("sqlite:")
